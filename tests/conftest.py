"""Shared fixtures: tiny random llama / qwen2 models with a tiny byte-level BPE tokenizer.

Everything is built in memory (no hub), once per session, and saved as Hugging Face checkpoint
directories so `ppgguf.base.load_base` exercises its HF-directory path.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A few merges, written in GPT-2's byte-to-unicode alphabet ("Ġ" is the space byte).
MERGES = [("t", "h"), ("th", "e"), ("Ġ", "t"), ("Ġ", "the"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "u"),
          ("Ġ", "a"), ("r", "e"), ("o", "n"), ("Ġ", "s")]

HIDDEN = 64
LAYERS = 2
INTERMEDIATE = 256
HEADS = 4
KV_HEADS = 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_tokenizer(directory: Path) -> int:
    """Write tokenizer.json + tokenizer_config.json into `directory`; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "unk_token": None,
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": CHATML,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tok.get_vocab_size()


def make_model(family: str, vocab_size: int, seed: int = 0, layers: int = LAYERS):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
        max_position_embeddings=2048, rms_norm_eps=1e-5, initializer_range=0.2, tie_word_embeddings=False,
        bos_token_id=vocab_size - 3, eos_token_id=vocab_size - 1,
    )
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attention_bias=False))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
        with torch.no_grad():  # transformers zero-initialises biases; make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.2)
    else:
        raise ValueError(family)
    with torch.no_grad():  # random norms too, so a permutation or mix-up of them would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


@dataclass
class Tiny:
    family: str
    dir: Path  # a Hugging Face checkpoint directory
    model: torch.nn.Module  # the dense model (do not modify: use `fresh()`)
    base: object  # ppgguf.base.BaseModel loaded from `dir`
    vocab_size: int

    def fresh(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)


def _make_tiny(family: str, root: Path) -> Tiny:
    from ppgguf.base import load_base

    directory = root / f"tiny-{family}"
    vocab_size = write_tiny_tokenizer(directory)
    model = make_model(family, vocab_size, seed={"llama": 1, "qwen2": 2}[family])
    model.save_pretrained(directory, safe_serialization=True)
    base = load_base(str(directory), root / f"work-{family}")
    return Tiny(family=family, dir=directory, model=base.model, base=base, vocab_size=vocab_size)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Tiny:
    return _make_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Tiny:
    return _make_tiny("qwen2", tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny(request) -> Tiny:
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def token_sequences(tiny_llama) -> list[list[int]]:
    """Deterministic token id sequences (both tiny models share the vocabulary)."""
    g = torch.Generator().manual_seed(123)
    n = tiny_llama.vocab_size - 3  # ordinary tokens only
    return [torch.randint(0, n, (24,), generator=g).tolist() for _ in range(3)]


@pytest.fixture(scope="session")
def chat_tokenizer(tiny_llama):
    from ppgguf.tokenizer import ChatTokenizer

    return ChatTokenizer(tiny_llama.base.tokenizer_spec, tiny_llama.base.vocab_gguf)


def tiny_recipe(method: str, quant: str = "Q8_0", **train) -> str:
    """TOML of the smallest recipe that runs every stage of `method` on the tiny models.

    The persona method runs both of its stages with the tiny model as its own teacher (exported to
    GGUF and run through llama.cpp); `train` sets [train] keys (steps, batch_size, heal, ...).
    """
    train = {"steps": 2, "batch_size": 1, "heal": False, **train}
    return "\n".join([
        "[prune]", f'method = "{method}"', "ffn_sparsity = 0.5", "head_sparsity = 0.5", "seed = 0",
        "[calibration]", "candidate_questions = 8", "reference_personas = 2", "selected_questions = 4",
        "answer_tokens = 8", "generic_sequences = 2", "sequence_length = 32",
        "[train]", *(f"{key} = {json.dumps(value)}" for key, value in train.items()),
        "[export]", f'quant = "{quant}"',
        "[validate]", "prompts = 2", "",
    ])
