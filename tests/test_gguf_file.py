"""The one GGUF metadata reader (ppgguf.llama.reader) reads what gguf-py's GGUFReader reads."""

from __future__ import annotations

import gguf
import pytest

from ppgguf.errors import UserError
from ppgguf.inputs.base import resolve_base
from ppgguf.llama.reader import read_header


def test_full_read_matches_gguf_py_on_the_default_base():
    path = resolve_base(None)
    header, reader = read_header(path, full=True), gguf.GGUFReader(path)
    fields = {key: fld for key, fld in reader.fields.items() if not key.startswith("GGUF.")}  # gguf-py's own
    assert list(header.fields) == list(fields)
    for key, fld in fields.items():
        value, vtype, itype = header.fields[key]
        assert vtype == fld.types[0], key
        assert itype == (fld.types[1] if fld.types[0] == gguf.GGUFValueType.ARRAY else None), key
        assert value == fld.contents(), key
    assert [(name, shape) for name, shape, _ in header.tensors] == [(t.name, list(map(int, t.shape))) for t in reader.tensors]
    assert [n_bytes for _, _, n_bytes in header.tensors] == [int(t.n_bytes) for t in reader.tensors]


def test_quick_read_skips_long_arrays_but_hashes_the_tokenizer():
    path = resolve_base(None)
    quick, full = read_header(path), read_header(path, full=True)
    assert quick.get(gguf.Keys.Tokenizer.MERGES) is None and full.get(gguf.Keys.Tokenizer.MERGES)
    assert quick.get(gguf.Keys.Tokenizer.LIST) == full.get(gguf.Keys.Tokenizer.LIST)
    assert quick.tokenizer_hash == full.tokenizer_hash
    assert gguf.Keys.Tokenizer.MERGES not in quick.values()


def test_truncated_tensor_data_is_refused(tmp_path):
    data = resolve_base(None).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])  # the header is whole, the last tensor is not
    with pytest.raises(UserError, match="truncated"):
        read_header(cut)
