"""The GGUF metadata reader: key-value fields and the tensor table, read without tensor data.

gguf-py's GGUFReader builds a numpy view per array item (about 100k for a 49k-token vocabulary:
seconds); `read_header` reads the same bytes with `struct` and skips what it is not asked for.
Tensor data (a base model's weights) is still read with gguf-py.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import UserError
from .keys import BAKE_OFF, PPGGUF, baked
from .tokenizer_spec import TokenizerSpec

_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?", gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q", gguf.GGUFValueType.FLOAT64: "<d",
}
# Arrays whose raw bytes make the tokenizer fingerprint.
_FINGERPRINT_KEYS = (gguf.Keys.Tokenizer.LIST, gguf.Keys.Tokenizer.MERGES)
# Numeric arrays at least this long (token scores and types) are skipped unless `full`.
_LONG_ARRAY = 4096


class _Cursor:
    """A read position in the mapped file."""

    def __init__(self, buf: mmap.mmap):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, decode: bool = True) -> str | None:
        n = self.take("<Q")
        self.pos += n
        return self.buf[self.pos - n : self.pos].decode("utf-8", errors="replace") if decode else None


class GGUFHeader:
    """The key-value metadata and tensor table of one GGUF file.

    Unless `full`, arrays of strings are decoded only for `tokenizer.ggml.tokens` (and long numeric
    arrays not at all: their value reads as None); the token list and the merges are hashed as raw
    bytes for `tokenizer_hash`, so two files with equal hashes tokenize alike.
    """

    def __init__(self, path: Path, full: bool = False):
        self.fields: dict[str, tuple] = {}  # key -> (value, value type, array item type or None)
        self.tensors: list[tuple[str, list[int], int]] = []  # (name, shape, n_bytes)
        self._full = full
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cursor = _Cursor(buf)
            if buf[:4] != b"GGUF":
                raise ValueError("bad magic")
            cursor.pos = 4
            version = cursor.take("<I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is not supported")
            n_tensors, n_kv = cursor.take("<Q"), cursor.take("<Q")
            self._hashed: dict[str, bytes] = {}
            for _ in range(n_kv):
                key = cursor.string()
                self.fields[key] = self._field(cursor, key)
            digest = hashlib.sha256()
            for key in _FINGERPRINT_KEYS:
                digest.update(key.encode() + b"=" + self._hashed.get(key, b"none") + b";")
            self.tokenizer_hash = digest.hexdigest()
            data_end = 0
            for _ in range(n_tensors):
                name, shape, n_bytes, offset = self._tensor(cursor)
                self.tensors.append((name, shape, n_bytes))
                data_end = max(data_end, offset + n_bytes)
            alignment = int(self.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
            data_start = -(-cursor.pos // alignment) * alignment
            if n_tensors and len(buf) < data_start + data_end:
                raise ValueError(f"the file ends at byte {len(buf)}, before its tensor data ({data_start + data_end})")

    def _field(self, cursor: _Cursor, key: str) -> tuple:
        vtype = cursor.take("<I")
        if vtype == gguf.GGUFValueType.STRING:
            return cursor.string(), vtype, None
        if vtype in _SCALARS:
            return cursor.take(_SCALARS[vtype]), vtype, None
        if vtype != gguf.GGUFValueType.ARRAY:
            raise ValueError(f"unknown value type {vtype} for {key}")
        itype, count = cursor.take("<I"), cursor.take("<Q")
        start = cursor.pos
        if itype == gguf.GGUFValueType.STRING:
            decode = self._full or key == gguf.Keys.Tokenizer.LIST
            items = [cursor.string(decode) for _ in range(count)]
            value = items if decode else None
        elif itype in _SCALARS:
            fmt = _SCALARS[itype]
            value = None
            if self._full or count < _LONG_ARRAY:
                value = list(struct.unpack_from(f"<{count}{fmt[1]}", cursor.buf, cursor.pos))
            cursor.pos += struct.calcsize(fmt) * count
        else:
            raise ValueError(f"nested arrays in {key} are not supported")
        if key in _FINGERPRINT_KEYS:
            self._hashed[key] = hashlib.sha256(cursor.buf[start : cursor.pos]).digest()
        return value, vtype, itype

    @staticmethod
    def _tensor(cursor: _Cursor) -> tuple[str, list[int], int, int]:
        """(name, shape, bytes of data, offset of the data from the start of the data section)."""
        name = cursor.string()
        shape = [cursor.take("<Q") for _ in range(cursor.take("<I"))]
        ttype = cursor.take("<I")
        offset = cursor.take("<Q")
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        n_elements = int(np.prod(shape)) if shape else 1
        return name, shape, n_elements // block * type_size, offset

    def get(self, key: str, default=None):
        entry = self.fields.get(key)
        return default if entry is None or entry[0] is None else entry[0]

    @property
    def baked(self) -> bool:
        """Whether the file carries its character in the weights (ppgguf.pruning.bake) rather than in its template."""
        return baked(self.get(PPGGUF.BAKE, BAKE_OFF))

    def values(self) -> dict[str, Any]:
        """Every field that was decoded, by key."""
        return {key: value for key, (value, _, _) in self.fields.items() if value is not None}

    def tokenizer_spec(self) -> TokenizerSpec:
        """The `tokenizer.*` fields, with their GGUF types (read with `full` to have them all)."""
        spec = TokenizerSpec()
        for key, (value, vtype, itype) in self.fields.items():
            if key.startswith("tokenizer.") and value is not None:
                spec.set(key, value, gguf.GGUFValueType(vtype), gguf.GGUFValueType(itype) if itype is not None else None)
        return spec


def read_header(path: Path, full: bool = False) -> GGUFHeader:
    """The metadata of the GGUF at `path`; a missing, truncated or foreign file raises UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return GGUFHeader(path, full)
    except Exception as err:  # truncated or not a GGUF: struct.error, ValueError, KeyError...
        raise UserError(f"{path}: not a readable GGUF file ({err.__class__.__name__}: {err}); is it truncated?") from None
