"""The size of a build's file, known before any long stage: llama.cpp's own quantizer, in a dry run.

llama.cpp chooses every tensor's type itself (width fallbacks, K-quant mixes that give some tensors
more bits, a different choice with an importance matrix), so a size computed from bits per weight
is off by megabytes. Instead a shape-only GGUF (header and tensor table in full, the data a sparse
hole) of the model at the build's widths, with the build's own metadata, goes through
`llama_model_quantize` with `dry_run`, which logs the type it would give every tensor; the file's
bytes follow exactly from those types (gguf-py's block sizes) and the header.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import gguf
import numpy as np
import torch

from ..errors import UserError
from ..inputs.shapes import model_shape
from ..llama.quant_types import AUTO, check_quant_type, source_quant, uses_imatrix
from ..llama.runtime import captured_stderr, llama_log
from ..pruning.plan import Importance, make_plan
from ..pruning.surgery import apply_plan
from ..recipe import CHOSEN_BY_AUTO, CHOSEN_BY_TARGET, Recipe, with_overrides
from .quantize import ImatrixArray, quantize_params
from .writer import export_gguf, gguf_metadata

if TYPE_CHECKING:
    from ..inputs.base import BaseModel
    from ..inputs.persona import Persona
    from ..llama.tokenizer_spec import TokenizerSpec

# One line per tensor: "[  12/ 272] blk.1.attn_q.weight - [ 576, 576, 1, 1], type = f32, size = ... -> ... (q4_0)"
_TENSOR_LINE = re.compile(
    r"^\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[(?P<shape>[\d,\s]+)\], type =\s+(?P<src>\w+),"
    r"(?:.*?->\s+[\d.]+ MiB \((?P<dst>\w+)\))?", re.M)
# The key llama.cpp's quantizer adds to every file it writes (u64 key length, key, u32 type, u32 value).
_QUANTIZATION_VERSION_KV = 8 + len(gguf.Keys.General.QUANTIZATION_VERSION) + 4 + 4


def shaped_like(model: torch.nn.Module, ffn_sparsity: float, head_sparsity: float) -> torch.nn.Module:
    """A weightless (meta-device) copy of `model` at the widths a uniform pruning plan gives it."""
    with torch.device("meta"):
        shell = type(model)(copy.deepcopy(model.config))
    layers = shell.model.layers
    n_groups = model.config.num_key_value_heads
    importance = Importance(ffn=[torch.zeros(layer.mlp.gate_proj.out_features) for layer in layers],
                            heads=[torch.zeros(n_groups) for _ in layers])
    return apply_plan(shell, make_plan(importance, ffn_sparsity, head_sparsity, uniform=True))


@dataclass
class ShapeFile:
    """A shape-only GGUF (ppgguf.export.writer with shapes_only) and what its writer knew."""

    path: Path
    header_bytes: int  # where the tensor table ends, before the padding to the data
    tensors: dict[str, tuple[int, ...]]  # GGUF name -> shape, numpy order (the last axis is a row)
    alignment: int


def write_shape_file(model: torch.nn.Module, write: Callable[..., dict], path: Path) -> ShapeFile:
    """`write(model, path, shapes_only=True)` (an export_gguf call) as a ShapeFile."""
    written = write(model, path, shapes_only=True)
    return ShapeFile(path, written["header_bytes"], written["tensors"], written["alignment"])


def predicted_file_bytes(shapes: ShapeFile, quant: str, with_imatrix: bool, embedding_quant: str = "") -> int:
    """Bytes of the file llama.cpp's quantizer makes of `shapes` at `quant` (the token embedding at
    `embedding_quant` where given)."""
    quant = check_quant_type(quant)
    width = shapes.tensors["token_embd.weight"][-1] if embedding_quant else None
    types = _dry_run_types(shapes.path, quantize_params(quant, embedding_quant, width),
                           shapes.tensors if with_imatrix else None)
    missing = set(shapes.tensors) - set(types)
    if missing:
        raise UserError(f"llama.cpp's dry run did not report the type of {len(missing)} tensors "
                        f"(e.g. {sorted(missing)[0]}); this llama.cpp logs differently: predicted sizes are unavailable")
    header = _padded(shapes.header_bytes + _QUANTIZATION_VERSION_KV, shapes.alignment)
    return header + sum(_padded(_tensor_bytes(shape, types[name]), shapes.alignment)
                        for name, shape in shapes.tensors.items())


def _dry_run_types(path: Path, params, imatrix_of: dict | None) -> dict[str, gguf.GGMLQuantizationType]:
    import llama_cpp

    params.dry_run = True
    # With an importance matrix some mixes choose other types, so a stand-in of the right shapes goes along.
    weights = ImatrixArray({name: np.ones(shape[-1], np.float32) for name, shape in imatrix_of.items()
                            if len(shape) == 2}) if imatrix_of else None
    if weights is not None:
        params.imatrix = weights.pointer
    with captured_stderr() as log, llama_log() as messages:
        rc = llama_cpp.llama_model_quantize(str(path).encode(), str(path.with_suffix(".dry")).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise UserError(f"llama.cpp could not plan this quantization of the model: "
                        f"{messages.last_line() or log.last_line()}")
    types = {}
    for match in _TENSOR_LINE.finditer(messages.text + "\n" + log.text):
        types[match["name"]] = gguf.GGMLQuantizationType[(match["dst"] or match["src"]).upper()]
    return types


def _tensor_bytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size


def _padded(n: int, align: int) -> int:
    return (n + align - 1) // align * align


# --------------------------------------------------------------------------------------------
# A build's predicted size, and the configuration for a size target


def predict_build_bytes(recipe: Recipe, base: BaseModel, spec: TokenizerSpec, persona: Persona, directory: Path,
                        shape_files: dict[tuple, ShapeFile]) -> int:
    """Bytes of the file `recipe` builds from `base`: its widths, its metadata, its quant type.

    Each sparsity's shape file is written once into `directory` and kept in `shape_files` for the
    next type asked; the caller removes the directory.
    """
    key = (recipe.prune.ffn_sparsity, recipe.prune.head_sparsity)
    if key not in shape_files:
        model = shaped_like(base.model, *key)
        metadata = gguf_metadata(persona, base, recipe, model)
        shape_files[key] = write_shape_file(
            model, lambda m, path, **kw: export_gguf(m, base.family, spec, path, "F32", **metadata, **kw),
            directory / f"shapes-{len(shape_files)}.f32.gguf")
    export = recipe.export
    return predicted_file_bytes(shape_files[key], export.quant,
                                uses_imatrix(export.quant, export.imatrix, export.embedding_quant), export.embedding_quant)


# A candidate's quant that stands for the base's own layer type (ppgguf.llama.quant_types.source_quant).
SOURCE = "source"
# quant "auto" makes a file genuinely smaller than the base's weights: at most this share of them (the
# base's own type with the mix's embedding comes within bytes of the source, with KL 0.003 on SmolLM2).
AUTO_SHARE = 0.95


@dataclass(frozen=True)
class Candidate:
    ffn_sparsity: float
    quant: str  # a llama.cpp type, or SOURCE
    imatrix: str
    embedding_quant: str  # the token embedding's type; "": the mix's own
    kl: float  # mean KL measured by benchmarks/frontier.py (see MEASURED_ON)
    same_as_source: bool = False  # quant was SOURCE, resolved for this base

    def for_base(self, own_type: str | None) -> Candidate | None:
        """This candidate for a base whose layers `own_type` reproduces; None where it has no meaning there."""
        if self.quant != SOURCE:
            return self
        return dataclasses.replace(self, quant=own_type, same_as_source=True) if own_type else None

    def type_overrides(self) -> dict:
        return {"quant": self.quant, "imatrix": self.imatrix, "embedding_quant": self.embedding_quant}

    def overrides(self) -> dict:
        return {"ffn_sparsity": self.ffn_sparsity, "head_sparsity": 0.0, "uniform": True, **self.type_overrides()}

    def describe(self) -> str:
        embedding = f", embedding and output {self.embedding_quant}" if self.embedding_quant else ""
        own = " (the base's own type)" if self.same_as_source else ""
        return f"FFN sparsity {self.ffn_sparsity:g}, {self.quant}{own}{embedding}, imatrix {self.imatrix}"


# What benchmarks/frontier.py measured (mean KL to the dense F16 model on held-out questions); a
# choice takes the lowest KL whose file fits, each size predicted for the build's own base model.
# Listed: the frontier of the files made in the base's own layer type (SOURCE: SmolLM2's Q4_1, whose
# requantization is nearly a round trip), and the frontier of the others, for bases with no own type
# (a checkpoint directory) and for sizes the own type does not reach.
MEASURED_ON = ("SmolLM2-135M-Instruct (a Q4_1 GGUF), five RoleBench characters, 40 held-out questions each "
               "(benchmarks/results/frontier-5-characters-40-questions.json, frontier-source-type-5-characters-"
               "40-questions.json); the pruned row on Jack Torrance alone (frontier-jack-torrance-40-questions.json)")
CANDIDATES = (
    Candidate(0.0, "F16", "none", "", 0.0),                  # 258.3 MiB
    Candidate(0.0, SOURCE, "none", "", 0.0027),              # 93.8 MiB (Q4_1), the source's own size
    Candidate(0.0, "Q8_0", "none", "", 0.0038),              # 138.1 MiB
    Candidate(0.0, SOURCE, "persona", "Q5_1", 0.0092),       # 85.4 MiB
    Candidate(0.0, SOURCE, "persona", "Q5_0", 0.0163),       # 83.7 MiB
    Candidate(0.0, "Q4_K_M", "persona", "", 0.0361),         # 100.6 MiB
    Candidate(0.0, SOURCE, "persona", "IQ4_NL", 0.0452),     # 80.3 MiB
    Candidate(0.0, "Q4_K_M", "persona", "Q5_0", 0.0507),     # 90.4 MiB
    Candidate(0.0, "Q4_K_M", "persona", "IQ4_NL", 0.0790),   # 87.1 MiB
    Candidate(0.0, "IQ4_XS", "persona", "", 0.0959),         # 86.7 MiB
    Candidate(0.0, "IQ4_NL", "persona", "Q5_0", 0.1042),     # 77.3 MiB
    Candidate(0.0, "IQ4_NL", "persona", "IQ4_NL", 0.1339),   # 74.0 MiB
    Candidate(0.0, "IQ3_S", "persona", "IQ4_NL", 0.1861),    # 70.6 MiB
    Candidate(0.0, "IQ3_XXS", "persona", "IQ4_NL", 0.2390),  # 69.4 MiB
    Candidate(0.0, "IQ2_M", "persona", "IQ4_NL", 0.3447),    # 68.1 MiB
    Candidate(0.5, "IQ4_NL", "persona", "", 0.9994),         # 66.1 MiB
)


def fit_to_size(recipe: Recipe, base: BaseModel, spec: TokenizerSpec, persona: Persona, work: Path) -> tuple[Recipe, dict]:
    """The recipe a build runs, and what its size will be.

    With a size target, the candidate with the lowest measured KL whose predicted file fits is
    chosen; a target no candidate reaches is refused with the smallest size there is. With quant
    "auto", the types (quant, imatrix, embedding) of the candidate with the lowest KL whose file at the
    recipe's own sparsity is at most AUTO_SHARE of the base's weight files, else of the smallest. A SOURCE
    candidate is the base's own layer type there, and left out where the base has none.
    Otherwise the recipe is kept.
    """
    target, auto = recipe.export.target_size_mib, recipe.export.quant == AUTO
    with tempfile.TemporaryDirectory(dir=work, prefix="shapes-") as directory:
        shape_files: dict[tuple, ShapeFile] = {}
        predict = lambda r: predict_build_bytes(r, base, spec, persona, Path(directory), shape_files)  # noqa: E731
        if not target and not auto:
            return recipe, {"predicted_bytes": predict(recipe)}
        own_type = source_quant(Path(base.source))
        candidates = [c for c in (c.for_base(own_type) for c in CANDIDATES) if c]
        if target:
            options = [(c, with_overrides(recipe, c.overrides())) for c in candidates]
            limit = int(target * 2**20)
        else:
            options = [(c, with_overrides(recipe, c.type_overrides())) for c in candidates if c.ffn_sparsity == 0]
            source_bytes = model_shape(Path(base.source)).source_bytes
            limit = int(source_bytes * AUTO_SHARE)
        smallest = None
        for candidate, chosen in sorted(options, key=lambda option: option[0].kl):
            predicted = predict(chosen)
            if predicted <= limit:
                rule = {"target_mib": target} if target else {"source_bytes": source_bytes}
                return chosen, {"predicted_bytes": predicted, **rule, "chosen": candidate.describe(),
                                "measured_kl": candidate.kl, "measured_on": MEASURED_ON}
            if smallest is None or predicted < smallest[0]:
                smallest = (predicted, candidate, chosen)
    size, candidate, chosen = smallest
    if auto and not target:  # nothing is smaller than the source: the smallest file there is
        return chosen, {"predicted_bytes": size, "source_bytes": source_bytes, "chosen": candidate.describe(),
                        "measured_kl": candidate.kl, "measured_on": MEASURED_ON}
    raise UserError(
        f"--target-size {target:g} MiB cannot be reached: the smallest file ppgguf makes of {recipe.base.model} is "
        f"{size / 2**20:.1f} MiB ({candidate.describe()}); ask for at least {size / 2**20:.1f}")


def check_target_options(recipe: Recipe, overrides: dict) -> None:
    """A size target chooses sparsity and types itself, quant "auto" the types: refuse options that set them too."""
    def flags(keys):  # as the user typed them: the options with a value, then the --per-layer switch (uniform)
        return ", ".join("--per-layer" if key == "uniform" else "--" + key.replace("_", "-")
                         for key in sorted(keys, key=lambda key: key == "uniform"))

    if recipe.export.target_size_mib:
        given = [key for key in CHOSEN_BY_TARGET if overrides.get(key) is not None]
        if given:
            raise UserError(f"--target-size chooses FFN sparsity, quant type and imatrix itself; drop {flags(given)} "
                            "(or drop --target-size to set them)")
    elif recipe.export.quant == AUTO:
        given = [key for key in CHOSEN_BY_AUTO if overrides.get(key) is not None]
        if given:
            raise UserError(f"{flags(given)} say how a quant type is made: add --quant TYPE (the default, auto, "
                            "chooses them with the type)")
