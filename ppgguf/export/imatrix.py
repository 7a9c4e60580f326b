"""Importance matrices: mean squared input activations per column of every quantized matrix.

llama.cpp's quantizer weighs the rounding error of each column of a matrix by how large that
column's inputs are on calibration data: the 32-block types and the K-quants round by it, and IQ3_XXS
and the IQ2 types cannot be made without it. `collect_imatrix` measures it on a PyTorch model with
forward pre-hooks, the way llama-imatrix measures it on a GGUF: per input column, the sum of x**2 over
all tokens, and the token count. Entries are keyed by GGUF tensor name
(`blk.0.ffn_down.weight`). The files written and read are llama-imatrix's GGUF format, so
`llama-quantize --imatrix` takes them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..inputs.families import Family
from ..pruning.surgery import layer_widths
from .writer import choose_arch, write_and_place

SUM2_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"


@dataclass
class ImportanceMatrix:
    sums: dict[str, np.ndarray]  # GGUF tensor name -> per-column sum of x**2 (float64)
    counts: dict[str, int]  # GGUF tensor name -> tokens summed
    chunk_count: int  # sequences (llama-imatrix's chunks) the sums cover
    chunk_size: int  # tokens of the longest sequence (llama-imatrix: tokens per chunk)
    datasets: list[str] = field(default_factory=list)

    def means(self) -> dict[str, np.ndarray]:
        """Per-column mean of x**2: what llama.cpp's quantizer takes (float32, sorted by name)."""
        return {name: (self.sums[name] / self.counts[name]).astype(np.float32) for name in sorted(self.sums)}


def quantized_linears(model: nn.Module, family: Family) -> dict[str, nn.Linear]:
    """GGUF tensor name -> the nn.Linear whose weight the GGUF stores as that (quantized) matrix.
    A tied output matrix is left out: the GGUF stores it as token_embd (see collect_imatrix)."""
    config = model.config
    arch = choose_arch(family, layer_widths(model), config.hidden_size, config.head_dim)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    linears = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or (module_name == "lm_head" and config.tie_word_embeddings):
            continue
        gguf_name = name_map.get_name(module_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for matrix {module_name}")
        linears[gguf_name] = module
    return linears


TIED_OUTPUT = "token_embd.weight"


@torch.no_grad()
def collect_imatrix(
    model: nn.Module, family: Family, sequences: list[list[int]], device: str = "cpu"
) -> ImportanceMatrix:
    """Sum x**2 per input column of every quantized matrix over `sequences`, run one at a time
    through `model` (already on `device`) in eval mode.

    Export permutes the rows of Q and K for llama.cpp's rotary layout (ppgguf.export.writer); rows are outputs,
    so the input columns measured here are the GGUF matrix's columns unchanged. Where the output
    matrix is the token embedding (tied), its inputs, the final norm's outputs, are entered under
    token_embd: llama-imatrix does not measure it, but llama.cpp's quantizer looks it up by that name,
    so a low-bit embedding (--embedding-quant) is rounded for the logits it makes.
    """
    if not sequences:
        raise ValueError("no calibration sequences for the importance matrix")
    linears = quantized_linears(model, family)
    widths = {name: m.in_features for name, m in linears.items()}
    tied = model.config.tie_word_embeddings
    if tied:
        widths[TIED_OUTPUT] = model.config.hidden_size
    sums = {name: torch.zeros(width, dtype=torch.float64, device=device) for name, width in widths.items()}
    counts = dict.fromkeys(widths, 0)

    def accumulate(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, widths[name]).to(torch.float64)
        sums[name] += x.square().sum(dim=0)
        counts[name] += x.shape[0]

    was_training = model.training
    model.eval()
    handles = [m.register_forward_pre_hook(lambda module, args, name=name: accumulate(name, args[0]))
               for name, m in linears.items()]
    if tied:
        handles.append(model.model.norm.register_forward_hook(lambda module, args, out: accumulate(TIED_OUTPUT, out)))
    # Tied, the body alone gives every input, without the vocabulary-wide matmul.
    run = model.model if tied else model
    try:
        for ids in sequences:
            run(torch.tensor([ids], device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ImportanceMatrix(
        sums={name: s.cpu().numpy() for name, s in sums.items()},
        counts=counts,
        chunk_count=len(sequences),
        chunk_size=max(len(ids) for ids in sequences),
    )


class _ImatrixWriter(gguf.GGUFWriter):
    def add_architecture(self) -> None:
        pass  # llama-imatrix's files carry no general.architecture


def write_imatrix_gguf(imatrix: ImportanceMatrix, path: Path, datasets: list[str]) -> None:
    """Write `imatrix` as llama-imatrix does (tools/imatrix/imatrix.cpp, save_imatrix).

    Keys: general.type "imatrix", imatrix.datasets (strings), imatrix.chunk_count and
    imatrix.chunk_size (u32). Tensors, sorted by name, all F32: `<name>.in_sum2` of ggml shape
    [columns, 1] and `<name>.counts` of shape [1, 1].
    """
    if not datasets:
        raise ValueError("an importance matrix file names at least one dataset")
    tmp = path.with_name(path.name + ".partial")
    writer = _ImatrixWriter(tmp, arch="")
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(gguf.Keys.IMatrix.DATASETS, list(datasets))
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.chunk_count)
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
    for name in sorted(imatrix.sums):
        # numpy shape (rows, columns) is ggml's [columns, rows]
        writer.add_tensor(name + SUM2_SUFFIX, imatrix.sums[name].astype(np.float32).reshape(1, -1))
        writer.add_tensor(name + COUNTS_SUFFIX, np.array([[imatrix.counts[name]]], dtype=np.float32))
    write_and_place(writer, tmp, path)


def read_imatrix_gguf(path: Path) -> ImportanceMatrix:
    """Read an importance matrix written by `write_imatrix_gguf` or by llama-imatrix."""
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read importance matrix {path}: {err}") from None
    kind = reader.fields.get(gguf.Keys.General.TYPE)
    if kind is not None and kind.contents() != gguf.GGUFType.IMATRIX:
        raise UserError(f"{path} is a GGUF of type '{kind.contents()}', not an importance matrix")
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors}
    sums, counts = {}, {}
    for tensor_name, values in tensors.items():
        if not tensor_name.endswith(SUM2_SUFFIX):
            continue
        name = tensor_name[: -len(SUM2_SUFFIX)]
        count = tensors.get(name + COUNTS_SUFFIX)
        if count is None or count.size != 1 or count[0] <= 0:
            raise UserError(f"{path}: {name} has no single positive token count (per-expert entries are unsupported)")
        sums[name], counts[name] = values, int(round(count[0]))
    if not sums:
        raise UserError(f"{path} holds no importance matrix entries (no *{SUM2_SUFFIX} tensors)")

    def field_value(key: str, default):
        found = reader.fields.get(key)
        return found.contents() if found is not None else default

    return ImportanceMatrix(
        sums=sums,
        counts=counts,
        chunk_count=int(field_value(gguf.Keys.IMatrix.CHUNK_COUNT, 0)),
        chunk_size=int(field_value(gguf.Keys.IMatrix.CHUNK_SIZE, 0)),
        datasets=list(field_value(gguf.Keys.IMatrix.DATASETS, [])),
    )
