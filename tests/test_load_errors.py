"""A GGUF that llama.cpp refuses: its reason reaches the error message (issue 15, defect 3)."""

from __future__ import annotations

import gguf
import pytest

from ppgguf.errors import UserError
from ppgguf.inputs.base import resolve_base
from ppgguf.llama.runtime import open_gguf
from ppgguf.use.chat import ChatSession


def _unknown_architecture(path):
    """A well-formed GGUF (its header reads) of an architecture llama.cpp does not know."""
    writer = gguf.GGUFWriter(path, "nonsense")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_open_gguf_says_why_a_truncated_file_does_not_load(tmp_path):
    data = resolve_base(None).read_bytes()
    half = tmp_path / "half.gguf"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as failure:
        open_gguf(half, n_ctx=64)
    assert "error loading model" in str(failure.value) and "incomplete" in str(failure.value)


def test_open_gguf_says_why_an_unknown_architecture_does_not_load(tmp_path):
    with pytest.raises(ValueError, match="unknown model architecture: 'nonsense'"):
        open_gguf(_unknown_architecture(tmp_path / "odd.gguf"), n_ctx=64)


def test_chat_says_why_the_file_does_not_load(tmp_path):
    with pytest.raises(UserError, match="llama.cpp cannot load .*unknown model architecture: 'nonsense'"):
        ChatSession(_unknown_architecture(tmp_path / "odd.gguf"))
