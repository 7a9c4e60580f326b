"""Quantize a GGUF with llama.cpp's own quantizer (through llama-cpp-python).

llama.cpp picks the type of every tensor: a row width that the requested block size does not
divide falls back to another type (the 32-blocks need rows of a multiple of 32, the K-quants of 256:
Q4_K falls back to Q5_0, Q6_K to Q8_0, and rows under 32 to F16), and K-quant mixes deliberately use
a bigger type for some tensors. The report lists every matrix stored in a type outside the
requested mix, so a user sees where the bytes went.

An importance matrix (ppgguf.export.imatrix) reaches the quantizer through
`llama_model_quantize_params.imatrix`: an array of `llama_model_imatrix_data {name, data, size}`
ended by an entry whose name is NULL, which llama.cpp copies before it starts (llama-quant.cpp).
The lowest-bit types cannot be made without one; llama.cpp would refuse only at the first such
tensor, so `check_imatrix_needed` (ppgguf.llama.quant_types) refuses them before any work.
"""

from __future__ import annotations

import ctypes
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np

from ..errors import UserError
from ..llama.quant_types import (EMBEDDING_TYPES, QUANT_TYPES, check_embedding_type, check_imatrix_needed,
                                 check_quant_type)
from ..llama.runtime import captured_stderr, llama_log

if TYPE_CHECKING:
    from .imatrix import ImportanceMatrix


class ImatrixArray:
    """`llama_model_imatrix_data` entries for the per-column means, NULL-name terminated.

    Holds the float buffers and names the C array points into; llama.cpp copies them when the
    quantizer starts, so this object must live until llama_model_quantize returns.
    """

    def __init__(self, means: dict[str, np.ndarray]):
        import llama_cpp

        self.names = [name.encode() for name in means]
        self.buffers = [np.ascontiguousarray(values, dtype=np.float32) for values in means.values()]
        self.entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()  # zeroed: last name NULL
        for entry, name, values in zip(self.entries, self.names, self.buffers):
            entry.name = name
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        self.pointer = ctypes.cast(self.entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))


def quantize(
    src: Path,
    dst: Path,
    quant: str,
    allow_requantize: bool = False,
    threads: int | None = None,
    imatrix: ImportanceMatrix | None = None,
    embedding_quant: str = "",
) -> dict:
    """Quantize `src` to `dst` (written through a temporary name), weighting rounding by `imatrix`
    where given, the token embedding at `embedding_quant` where given; returns the type report."""
    import llama_cpp

    quant = check_quant_type(quant)
    check_imatrix_needed(quant, imatrix is not None)
    params = quantize_params(quant, embedding_quant, embedding_width(src) if embedding_quant else None)
    params.nthread = threads or os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    weights = ImatrixArray(imatrix.means()) if imatrix is not None else None
    if weights is not None:
        params.imatrix = weights.pointer
    tmp = dst.with_name(dst.name + ".partial")
    # llama.cpp logs through its callback (where its last line says why it failed) and writes to fd 2
    with captured_stderr() as log, llama_log() as messages:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        reason = messages.last_line() or log.last_line() or f"rc={rc}"
        raise UserError(f"llama.cpp could not quantize {src.name} to {quant}: {reason}")
    tmp.replace(dst)
    report = type_report(dst, quant, embedding_quant)
    if weights is not None:
        report["imatrix_entries"] = len(weights.names)
    return report


def quantize_params(quant: str, embedding_quant: str = "", width: int | None = None):
    """llama.cpp's quantize parameters for the type `quant`, the token embedding and output matrices at `embedding_quant`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant].ftype)
    if embedding_quant:
        # The output matrix too: where it is the embedding (tied) they are one tensor, and where it is
        # not, the mixes keep it at 6-8 bits just the same (Q8_0, 139 of Qwen2.5-0.5B's 469 MiB).
        params.token_embedding_type = params.output_tensor_type = int(
            EMBEDDING_TYPES[check_embedding_type(embedding_quant, width)])
    return params


def embedding_width(path: Path) -> int:
    """Row width of a GGUF's token embedding, from its tensor table."""
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.name == "token_embd.weight":
            return int(tensor.shape[0])
    raise UserError(f"{path} has no token_embd.weight tensor")


def type_report(path: Path, quant: str, embedding_quant: str = "") -> dict:
    """Types of the file's matrices, and the matrices stored outside the requested mix."""
    reader = gguf.GGUFReader(path)
    counts: Counter = Counter()
    fallbacks = []
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] += 1
        expected = ({EMBEDDING_TYPES[embedding_quant.upper()]}
                    if embedding_quant and tensor.name in ("token_embd.weight", "output.weight")
                    else QUANT_TYPES[quant].types)
        if len(tensor.shape) >= 2 and tensor.tensor_type not in expected:
            fallbacks.append({"tensor": tensor.name, "type": tensor.tensor_type.name, "row": int(tensor.shape[0])})
    return {"quant": quant, **({"embedding_quant": embedding_quant.upper()} if embedding_quant else {}),
            "tensor_types": dict(sorted(counts.items())), "fallbacks": fallbacks}
