"""Shared fixtures: an empty ppgguf home per test, and the tiny models of `tiny_models` as checkpoints.

The tiny models are built in memory (no hub), once per session, and saved as Hugging Face checkpoint
directories so `ppgguf.inputs.base.load_base` exercises its HF-directory path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tiny_models import make_model, write_tiny_tokenizer


@pytest.fixture(autouse=True)
def ppgguf_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty run cache: nothing leaks between tests or from the user's."""
    home = tmp_path / "home"
    monkeypatch.setenv("PPGGUF_HOME", str(home))
    return home


@dataclass
class Tiny:
    family: str
    dir: Path  # a Hugging Face checkpoint directory
    model: torch.nn.Module  # the dense model (do not modify: use `fresh()`)
    base: object  # ppgguf.inputs.base.BaseModel loaded from `dir`
    vocab_size: int

    def fresh(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)


def _make_tiny(family: str, root: Path) -> Tiny:
    from ppgguf.inputs.base import load_base

    directory = root / f"tiny-{family}"
    vocab_size = write_tiny_tokenizer(directory)
    model = make_model(family, vocab_size, seed={"llama": 1, "qwen2": 2, "qwen3": 3}[family])
    model.save_pretrained(directory, safe_serialization=True)
    base = load_base(str(directory), root / f"work-{family}")
    return Tiny(family=family, dir=directory, model=base.model, base=base, vocab_size=vocab_size)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Tiny:
    return _make_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Tiny:
    return _make_tiny("qwen2", tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Tiny:
    return _make_tiny("qwen3", tmp_path_factory.mktemp("tiny-qwen3"))


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
    from ppgguf.inputs.tokenizer import ChatTokenizer

    return ChatTokenizer(tiny_llama.base.tokenizer_spec, tiny_llama.base.vocab_gguf)
