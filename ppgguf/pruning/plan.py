"""From importance scores to a pruning plan: which FFN channels and KV groups each layer keeps.

Scorers (ppgguf.pruning.importance) say how much each channel and head group matters; this module decides
how many survive, with the rounding rules that keep the result fast and loadable in llama.cpp:
kept FFN widths are multiples of 32 (256 when the width allows it, for K-quants), at least one KV
group and 32 channels per layer, and query heads always go with their whole KV group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..recipe import check_sparsity

FFN_MULTIPLE = 32
FFN_MULTIPLE_KQUANT = 256


@dataclass
class Importance:
    """Scores per layer: `ffn[i]` has one score per FFN channel, `heads[i]` one per KV group."""

    ffn: list[torch.Tensor]
    heads: list[torch.Tensor]


@dataclass
class PruningPlan:
    """Sorted indices kept in each layer: FFN channels and KV groups (with their query heads)."""

    ffn_keep: list[list[int]]
    kv_keep: list[list[int]]

    @property
    def ffn_widths(self) -> list[int]:
        return [len(k) for k in self.ffn_keep]

    @property
    def kv_groups(self) -> list[int]:
        return [len(k) for k in self.kv_keep]

    @property
    def uniform(self) -> bool:
        return len(set(self.ffn_widths)) == 1 and len(set(self.kv_groups)) == 1

    def to_json(self) -> dict:
        return {"ffn_keep": self.ffn_keep, "kv_keep": self.kv_keep}

    @classmethod
    def from_json(cls, data: dict) -> "PruningPlan":
        return cls(ffn_keep=data["ffn_keep"], kv_keep=data["kv_keep"])

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def kept_ffn_width(width: int, sparsity: float) -> int:
    """Channels kept out of `width`: (1 - sparsity) * width rounded to a multiple of 32, at least 32.

    A multiple of 256 (what K-quants need) is taken instead when one lies within 5% of the width of
    the target, so K-quants do not fall back without the sparsity drifting far from what was asked.
    """
    if sparsity == 0 or width < FFN_MULTIPLE:
        return width
    target = (1.0 - sparsity) * width
    kept = int(round(target / FFN_MULTIPLE)) * FFN_MULTIPLE
    kquant = int(round(target / FFN_MULTIPLE_KQUANT)) * FFN_MULTIPLE_KQUANT
    if kquant > 0 and abs(kquant - target) <= 0.05 * width:
        kept = kquant
    return max(FFN_MULTIPLE, min(width, kept))


def kept_kv_groups(n_groups: int, sparsity: float) -> int:
    return max(1, min(n_groups, int(round((1.0 - sparsity) * n_groups))))


def make_plan(importance: Importance, ffn_sparsity: float, head_sparsity: float, uniform: bool = True) -> PruningPlan:
    """Keep the highest-scoring channels and KV groups.

    uniform=True keeps the same count in every layer (a plain `llama` GGUF). uniform=False ranks
    every layer's FFN channels together, after normalising each layer's scores by their mean so layers
    are comparable, and gives each layer its share rounded to 32 (a per-layer `deci` GGUF).
    Heads are always pruned uniformly: per-layer head counts save little and cost compatibility.
    """
    check_sparsity("ffn sparsity", ffn_sparsity)
    check_sparsity("head sparsity", head_sparsity)
    n_groups = len(importance.heads[0])
    if round((1.0 - head_sparsity) * n_groups) < 1:
        raise UserError(
            f"head sparsity {head_sparsity} leaves no attention head of {n_groups} KV groups; "
            f"use at most {1 - 0.5 / n_groups:.2f}"
        )
    narrowest = min(len(s) for s in importance.ffn)
    if ffn_sparsity > 0 and (1.0 - ffn_sparsity) * narrowest < FFN_MULTIPLE:
        raise UserError(
            f"ffn sparsity {ffn_sparsity} leaves fewer than {FFN_MULTIPLE} of {narrowest} FFN channels; "
            f"use at most {1 - FFN_MULTIPLE / narrowest:.2f}"
        )
    keep_groups = kept_kv_groups(n_groups, head_sparsity)
    kv_keep = [_top(scores, keep_groups) for scores in importance.heads]

    widths = [len(s) for s in importance.ffn]
    if uniform:
        counts = [kept_ffn_width(w, ffn_sparsity) for w in widths]
    else:
        counts = _global_counts(importance.ffn, ffn_sparsity)
    ffn_keep = [_top(scores, k) for scores, k in zip(importance.ffn, counts)]
    return PruningPlan(ffn_keep=ffn_keep, kv_keep=kv_keep)


def _top(scores: torch.Tensor, k: int) -> list[int]:
    # Stable tie-break by index keeps plans deterministic for equal scores.
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def _global_counts(ffn_scores: list[torch.Tensor], sparsity: float) -> list[int]:
    if sparsity == 0:
        return [len(s) for s in ffn_scores]
    normalised = [s.float() / s.float().abs().mean().clamp_min(1e-12) for s in ffn_scores]
    every = torch.cat(normalised)
    n_keep = int(round((1.0 - sparsity) * len(every)))
    threshold = torch.topk(every, n_keep).values.min()
    counts = []
    for s in normalised:
        raw = int((s >= threshold).sum())
        kept = int(round(raw / FFN_MULTIPLE)) * FFN_MULTIPLE
        counts.append(max(FFN_MULTIPLE, min(len(s), kept)))
    return counts
