"""Wanda-sp: Wanda's |weight| x ||input activation|| summed over each structure.

The structured variant used as a baseline by FLAP (An et al., AAAI 2024): an FFN channel j scores
sum_i |W_down[i, j]| * ||X_j||, where X_j is channel j of the input to down_proj over the
calibration tokens; a KV group scores the same sum over the o_proj columns of its query heads.
Only the projections that consume the pruned channels are scored, as in the published method.
"""

from __future__ import annotations

import torch

from ..coupling import Slice, layer_couplings, per_structure
from ..plan import Importance
from .common import ScoringInputs

DATA = "generic"


class InputNorms:
    """Per layer: squared L2 norm over the calibration tokens of each input channel of down_proj and o_proj.

    Hooks count every token a forward pass sees while this is active (a `with` block); a caller
    that shares or pads positions sets `weights` ([batch, tokens], how many sequences each position
    stands for) before each pass, as ppgguf.calibration.batches.answer_logits does through `before_pass`. The
    output matrices are never applied here: the norms do not need them.
    """

    def __init__(self, model: torch.nn.Module):
        self.couplings = layer_couplings(model)
        self.down_sq: list = [None] * len(self.couplings)
        self.o_sq: list = [None] * len(self.couplings)
        self.weights: torch.Tensor | None = None
        self._handles = []

    def set_weights(self, weights: torch.Tensor) -> None:
        self.weights = weights

    def _accumulate(self, store: list, i: int):
        def hook(_module, args):
            x = args[0].detach().float()
            if self.weights is None:
                x = x.reshape(-1, x.shape[-1])
                sq = (x * x).sum(0)
            else:
                sq = torch.einsum("btc,bt->c", x * x, self.weights.to(x.device))
            store[i] = sq if store[i] is None else store[i] + sq
        return hook

    def __enter__(self) -> "InputNorms":
        for i, (ffn, kv) in enumerate(self.couplings):
            self._handles.append(ffn.consumer.linear.register_forward_pre_hook(self._accumulate(self.down_sq, i)))
            self._handles.append(kv.consumer.linear.register_forward_pre_hook(self._accumulate(self.o_sq, i)))
        return self

    def __exit__(self, *_exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@torch.no_grad()
def input_norms(model: torch.nn.Module, calibration: list[list[int]], device: str) -> InputNorms:
    """InputNorms over whole token sequences, one forward pass each."""
    with InputNorms(model) as norms:
        for ids in calibration:
            model.model(torch.tensor([ids], device=device))
    return norms


@torch.no_grad()
def score(inputs: ScoringInputs) -> Importance:
    if not inputs.calibration:
        raise ValueError("wanda-sp needs calibration text")
    return from_norms(inputs.model, input_norms(inputs.model, inputs.calibration, inputs.device))


def _weighted_columns(consumer: Slice, input_sq: torch.Tensor) -> torch.Tensor:
    """sum_i |W[i, c]| * ||X_c|| per input column c of the consumer, summed over each structure."""
    per_column = (consumer.linear.weight.abs().float() * input_sq.sqrt()).sum(0)
    return per_structure(per_column, consumer.unit).cpu()


def from_norms(model: torch.nn.Module, norms: InputNorms) -> Importance:
    couplings = layer_couplings(model)
    return Importance(
        ffn=[_weighted_columns(ffn.consumer, d_sq) for (ffn, _), d_sq in zip(couplings, norms.down_sq)],
        heads=[_weighted_columns(kv.consumer, a_sq) for (_, kv), a_sq in zip(couplings, norms.o_sq)],
    )
