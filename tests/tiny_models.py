"""Tiny random llama / qwen2 / qwen3 models and a tiny byte-level BPE tokenizer, built in memory (no hub).

The one builder of test models: conftest's fixtures and the helper modules of the tests use it.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def make_model(family: str, vocab_size: int, seed: int = 0, layers: int = LAYERS, tied: bool = False,
               intermediate: int = INTERMEDIATE, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A random `family` model (llama, qwen2 or qwen3) of the tiny shape; random norms and biases too."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
        max_position_embeddings=2048, rms_norm_eps=1e-5, initializer_range=0.2, tie_word_embeddings=tied,
        bos_token_id=vocab_size - 3 if bos_token_id is None else bos_token_id,
        eos_token_id=vocab_size - 1 if eos_token_id is None else eos_token_id,
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
    elif family == "qwen3":  # Q/K norms (random below, as every norm), no biases
        model = Qwen3ForCausalLM(Qwen3Config(**common, attention_bias=False))
    else:
        raise ValueError(family)
    with torch.no_grad():  # random norms too, so a permutation or mix-up of them would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


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
