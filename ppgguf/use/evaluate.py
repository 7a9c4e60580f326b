"""`ppgguf eval`: a pruned GGUF against its dense twin, from the files alone.

`evaluate` answers "did the character survive?" (KL to the dense model on the dense model's own
in-character answers, persona attribution, general knowledge); `ppgguf.use.bench` answers "is it
faster?". What both read of a file (`read_info`, `read_pair`) lives here. The measures live in
`ppgguf.evaluation.fidelity` and `ppgguf.evaluation.speed`, the tables in `ppgguf.use.render`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import gguf

from ..errors import UserError
from ..evaluation import fidelity, speed
from ..inputs.tokenizer import ChatTokenizer
from ..llama.decode import greedy_answer
from ..llama.keys import PPGGUF
from ..llama.reader import read_header
from ..llama.runtime import open_gguf

DEFAULT_QUESTIONS = 10
DEFAULT_MAX_TOKENS = 64
SAMPLES = 3


@dataclass
class GGUFInfo:
    """What one compared file says about itself."""

    path: Path
    name: str
    system_prompt: str | None
    persona_name: str | None
    description: str | None
    tokenizer_hash: str
    file_bytes: int
    matrix_bytes: int
    kv_bytes_per_token: int
    baked: bool  # the persona in the weights: the file's template sends only its short prompt (ppgguf.pruning.bake)

    def to_json(self) -> dict:
        return {
            "path": str(self.path), "name": self.name, "persona": self.persona_name, "baked": self.baked,
            "file_bytes": self.file_bytes, "matrix_bytes_per_token": self.matrix_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        }


def read_info(path: Path) -> GGUFInfo:
    path = Path(path)
    header = read_header(path)
    if gguf.Keys.Tokenizer.LIST not in header.fields:
        raise UserError(f"{path}: the GGUF has no tokenizer")
    return GGUFInfo(
        path=path,
        name=header.get(gguf.Keys.General.NAME) or path.stem,
        system_prompt=header.get(PPGGUF.SYSTEM_PROMPT),
        persona_name=header.get(PPGGUF.PERSONA_NAME),
        description=header.get(PPGGUF.PERSONA_DESCRIPTION),
        tokenizer_hash=header.tokenizer_hash,
        file_bytes=path.stat().st_size,
        matrix_bytes=speed.matrix_bytes_per_token(header.tensors),
        kv_bytes_per_token=speed.kv_bytes_per_token(header.tensors),
        baked=header.baked,
    )


def check_same_tokenizer(npc: GGUFInfo, dense: GGUFInfo) -> None:
    if npc.tokenizer_hash != dense.tokenizer_hash:
        raise UserError(
            f"{npc.path.name} and {dense.path.name} have different tokenizers (token list or merges differ); "
            "compare a pruned file only with the dense model it was built from"
        )


def load_questions(path: Path | None, n: int, seed: int = 0) -> list[str]:
    """`n` questions: a seeded subset of the package's question pool, or the first `n` of `path`
    (a .jsonl file with a "question" field per line, or plain text, one question per line)."""
    if path is None:
        text = (resources.files("ppgguf") / "data" / "questions.jsonl").read_text(encoding="utf-8")
        pool = [json.loads(line)["question"] for line in text.splitlines() if line.strip()]
        return random.Random(seed).sample(pool, min(n, len(pool)))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such questions file")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                questions.append(str(json.loads(line)["question"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a \"question\" field") from None
        else:
            questions.append(line)
    if not questions:
        raise UserError(f"{path}: no questions in the file")
    return questions[:n]


def read_pair(npc_path: Path, dense_path: Path) -> tuple[GGUFInfo, GGUFInfo]:
    npc, dense = read_info(npc_path), read_info(dense_path)
    check_same_tokenizer(npc, dense)
    return npc, dense


def chat_tokenizer_of(path: Path) -> ChatTokenizer:
    return ChatTokenizer(read_header(path).tokenizer_spec(), path)


def _system_prompt(npc: GGUFInfo, given: str | None) -> str:
    prompt = given if given is not None else npc.system_prompt
    if not prompt:
        raise UserError(
            f"{npc.path.name} carries no ppgguf.system_prompt (not built by ppgguf?); give one with --system-prompt"
        )
    return prompt


def open_llm(path: Path, n_ctx: int, threads: int | None, logits_all: bool = False):
    try:
        return open_gguf(path, n_ctx=n_ctx, logits_all=logits_all, threads=threads)
    except ValueError as err:
        raise UserError(f"{path}: does not load in llama.cpp ({err})") from None


def evaluate(
    npc_path: Path,
    dense_path: Path,
    questions_file: Path | None = None,
    n: int = DEFAULT_QUESTIONS,
    seed: int = 0,
    system_prompt: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    threads: int | None = None,
    embed: fidelity.Embedder | None = None,
    general_knowledge: list[dict] | None = None,
) -> dict:
    npc, dense = read_pair(Path(npc_path), Path(dense_path))
    system = _system_prompt(npc, system_prompt)
    questions = load_questions(questions_file, n, seed)
    items = fidelity.load_general_knowledge() if general_knowledge is None else general_knowledge
    tokenizer = chat_tokenizer_of(npc.path)
    prompts = [
        tokenizer.chat_ids([{"role": "system", "content": system}, {"role": "user", "content": q}], True)
        for q in questions
    ]
    n_ctx = max(len(p) for p in prompts) + max_tokens + 8
    for item in items:
        for ids, _ in fidelity.choice_sequences(tokenizer, item["question"], item["choices"], system):
            n_ctx = max(n_ctx, len(ids) + 8)
    measured = _measure_pair(dense.path, npc.path, n_ctx, threads, prompts, max_tokens, tokenizer, items, system)
    dense_texts = [answer.text.strip() for answer in measured["dense_answers"]]
    npc_texts = [answer.text.strip() for answer in measured["npc_answers"]]
    description = npc.description or system
    others = fidelity.other_descriptions(npc.persona_name)
    embed = embed or fidelity.load_embedder()
    gk_dense, gk_npc = measured["gk_dense"], measured["gk_npc"]
    return {
        "npc": npc.to_json(),
        "dense": dense.to_json(),
        "character": npc.persona_name or npc.name,
        "questions": len(questions),
        "max_tokens": max_tokens,
        "kl": measured["kl"],
        "attribution": {
            "dense": fidelity.attribution(dense_texts, description, others, embed),
            "npc": fidelity.attribution(npc_texts, description, others, embed),
        },
        "repetition": {"dense": fidelity.repetition_rate(dense_texts), "npc": fidelity.repetition_rate(npc_texts)},
        "general_knowledge": {
            "dense": gk_dense["accuracy"],
            "npc": gk_npc["accuracy"],
            "questions": gk_dense["questions"],
            "agreement": (
                sum(a == b for a, b in zip(gk_dense["picks"], gk_npc["picks"])) / len(items) if items else float("nan")
            ),
        },
        "samples": [
            {"question": q, "dense": d, "npc": s}
            for q, d, s in list(zip(questions, dense_texts, npc_texts))[:SAMPLES]
        ],
    }


def _measure_pair(dense_path, npc_path, n_ctx, threads, prompts, max_tokens, tokenizer, items, system) -> dict:
    """Greedy answers of both models, KL on the dense answers, and both models' general knowledge."""
    dense_llm = open_llm(dense_path, n_ctx, threads, logits_all=True)
    try:
        npc_llm = open_llm(npc_path, n_ctx, threads, logits_all=True)
        try:
            dense_answers = [greedy_answer(dense_llm, p, max_tokens) for p in prompts]
            npc_answers = [greedy_answer(npc_llm, p, max_tokens) for p in prompts]
            sequences = [p + a.ids for p, a in zip(prompts, dense_answers)]
            spans = [(len(p), len(p) + len(a.ids)) for p, a in zip(prompts, dense_answers)]
            return {
                "dense_answers": dense_answers,
                "npc_answers": npc_answers,
                "kl": fidelity.teacher_forced_kl(dense_llm, npc_llm, sequences, spans),
                "gk_dense": fidelity.general_knowledge_accuracy(dense_llm, tokenizer, items, system),
                "gk_npc": fidelity.general_knowledge_accuracy(npc_llm, tokenizer, items, system),
            }
        finally:
            npc_llm.close()
    finally:
        dense_llm.close()
