"""Quantize a GGUF with llama.cpp's own quantizer (through llama-cpp-python).

llama.cpp picks the type of every tensor: a row width that the requested block size does not
divide falls back to another type (DESIGN.md section 2), and K-quant mixes deliberately use a
bigger type for some tensors. The report lists every matrix stored in a type outside the
requested mix, so a user sees where the bytes went.
"""

from __future__ import annotations

import ctypes
import os
from collections import Counter
from pathlib import Path

import gguf

from .errors import UserError
from .llama_io import captured_stderr

T = gguf.GGMLQuantizationType
# name -> (llama.cpp file type constant name, matrix types that count as "as requested")
QUANT_TYPES: dict[str, tuple[str, set]] = {
    "F32": ("LLAMA_FTYPE_ALL_F32", {T.F32}),
    "F16": ("LLAMA_FTYPE_MOSTLY_F16", {T.F16}),
    "BF16": ("LLAMA_FTYPE_MOSTLY_BF16", {T.BF16}),
    "Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", {T.Q8_0}),
    "Q6_K": ("LLAMA_FTYPE_MOSTLY_Q6_K", {T.Q6_K}),
    "Q5_K_M": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", {T.Q5_K, T.Q6_K}),
    "Q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", {T.Q5_0}),
    "Q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", {T.Q5_1}),
    "Q4_K_M": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", {T.Q4_K, T.Q6_K}),
    "Q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", {T.Q4_0}),
    "Q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", {T.Q4_1}),
}


def check_quant_type(name: str) -> str:
    key = name.upper()
    if key not in QUANT_TYPES:
        raise UserError(f"unknown quant type '{name}'; choose one of: {', '.join(QUANT_TYPES)}")
    return key


def quantize(src: Path, dst: Path, quant: str, allow_requantize: bool = False, threads: int | None = None) -> dict:
    """Quantize `src` to `dst` (written through a temporary name); returns the type report."""
    import llama_cpp

    quant = check_quant_type(quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant][0])
    params.nthread = threads or os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    tmp = dst.with_name(dst.name + ".partial")
    with captured_stderr() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise UserError(f"llama.cpp could not quantize {src.name} to {quant}: {log.last_line() or 'rc=' + str(rc)}")
    tmp.replace(dst)
    return type_report(dst, quant)


def type_report(path: Path, quant: str) -> dict:
    """Types of the file's matrices, and the matrices stored outside the requested mix."""
    expected = QUANT_TYPES[quant][1]
    reader = gguf.GGUFReader(path)
    counts: Counter = Counter()
    fallbacks = []
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] += 1
        if len(tensor.shape) >= 2 and tensor.tensor_type not in expected:
            fallbacks.append({"tensor": tensor.name, "type": tensor.tensor_type.name, "row": int(tensor.shape[0])})
    return {"quant": quant, "tensor_types": dict(sorted(counts.items())), "fallbacks": fallbacks}
