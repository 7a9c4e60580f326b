"""Pruning as a library function: score channels and heads, choose what to keep, cut it out, heal the rest.

`prune_model` is the part of a build that decides the weights; `ppgguf.build.pipeline` calls it with a run
directory (finished plans and healed weights are kept there and reused), benchmarks/fidelity.py
without one. With nothing to prune (both sparsities 0) nothing is scored or healed: the model is
returned as it is, so a "dense reference" build is the source model's round trip, unless the
persona is baked into the weights (ppgguf.pruning.bake), which trains whatever is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..calibration.batches import answer_distributions
from ..calibration.distill import Target
from ..recipe import Recipe
from ..runs import atomic_write_json, key_of, read_json
from ..stages import StageClock, step_reporter
from .bake import BakePairs
from .coupling import decoder_layers, group_shape
from .heal import heal
from .importance import ScoringInputs, data_needed, get_scorer
from .plan import PruningPlan, make_plan
from .surgery import apply_plan

Sequence = tuple[list[int], int]  # token ids of [system, user, answer] and where the answer starts


class Calibration:
    """The token sequences scorers and healing read; each is computed once, when first asked for.

    `bake`: the (teacher, student, groups) sequences for baking the persona in: the same answers with the
    persona prompt and as the student sees them (ppgguf.pruning.bake.bake_pairs).
    """

    def __init__(self, persona: Callable[[], list[Sequence]], generic: Callable[[], list[list[int]]],
                 bake: Callable[[], BakePairs] | None = None):
        self.persona = cache(persona)
        self.generic = cache(generic)
        self.bake = cache(bake or (lambda: BakePairs([], [], [])))


@dataclass
class Pruned:
    model: torch.nn.Module
    plan: PruningPlan
    log: dict[str, Any] = field(default_factory=dict)  # what the scorer and healing report


@dataclass
class RunCache:
    """Where a build keeps its plan and healed weights, and the keys that decide them."""

    directory: Path
    plan_key: Any  # everything that decides the plan
    weights_key: Any  # the plan's key plus the healing settings


def nothing_to_prune(recipe: Recipe) -> bool:
    return recipe.prune.ffn_sparsity == 0 and recipe.prune.head_sparsity == 0


def keep_everything(model: torch.nn.Module) -> PruningPlan:
    n_groups = group_shape(model)[0]
    layers = decoder_layers(model)
    return PruningPlan(ffn_keep=[list(range(layer.mlp.gate_proj.out_features)) for layer in layers],
                       kv_keep=[list(range(n_groups)) for _ in layers])


def prune_model(model: torch.nn.Module, recipe: Recipe, calibration: Calibration, device: str,
                clock: StageClock, cache_at: RunCache | None = None) -> Pruned:
    """Prune `model` in place to `recipe`'s sparsities, then heal it or bake the persona in if the recipe says so."""
    baking = recipe.train.bakes
    if nothing_to_prune(recipe) and not baking:
        clock.progress("Nothing to prune (sparsity 0): the model is kept as it is, without scoring or healing")
        return Pruned(model, keep_everything(model), {"skipped": "nothing to prune"})
    if nothing_to_prune(recipe):
        plan, log, dense_answers = keep_everything(model), {"skipped": "nothing to prune"}, None
    else:
        plan, log, dense_answers = choose_plan(model, recipe, calibration, device, clock, cache_at)
    trains = recipe.train.heal or baking
    healed = _healed_file(cache_at)
    stage = "bake" if baking else "heal"
    sequences, teacher, groups = [], None, None
    if trains and not (healed and healed.is_file()):
        # Fetched before any stage clock runs, so their calibration time is not counted as training too.
        if baking:
            teacher_sequences, sequences, groups = calibration.bake()
        else:
            teacher_sequences = sequences = calibration.persona()
        # The dense model's answer distributions (with the persona prompt) are the target: mask
        # learning computed them already for healing, unless its loss was cross-entropy or the plan
        # came from the run directory.
        teacher = (None if baking else dense_answers) or clock.run(
            stage, "Dense answer distributions with the persona prompt",
            lambda: answer_distributions(model.to(device), teacher_sequences, device, top_k=recipe.train.teacher_top_k),
        )
        model.to("cpu")
    if not nothing_to_prune(recipe):
        model = clock.run("surgery", "Removing pruned channels and heads", lambda: apply_plan(model, plan))
    if trains:
        log[f"{stage}_loss_history"] = train_model(model, recipe, sequences, teacher, device, clock, healed, stage,
                                                   groups)
    return Pruned(model, plan, log)


def choose_plan(model, recipe: Recipe, calibration: Calibration, device: str, clock: StageClock,
                cache_at: RunCache | None) -> tuple[PruningPlan, dict[str, Any], list[Target] | None]:
    """Score channels and heads and choose what to keep; reused from the run directory when its key matches.

    Returns the plan, the scorer's log and the dense answer distributions the scorer computed (or None).
    """
    plan_file = cache_at.directory / "plan.json" if cache_at else None
    saved = read_json(plan_file) if plan_file else None
    if saved is not None and saved.get("key") == key_of(cache_at.plan_key):
        clock.progress("Reusing the pruning plan from the run directory")
        return PruningPlan.from_json(saved["plan"]), saved.get("log", {}), None
    prune, train = recipe.prune, recipe.train
    inputs = ScoringInputs(
        model=model.to(device), ffn_sparsity=prune.ffn_sparsity, head_sparsity=prune.head_sparsity,
        seed=prune.seed, device=device,
        settings={"steps": train.steps, "batch_size": train.batch_size, "lr": train.lr, "loss": train.loss,
                  "teacher_top_k": train.teacher_top_k},
        on_step=step_reporter("Learning masks", clock.progress),
    )
    needed = data_needed(prune.method)
    if needed == "generic":
        inputs.calibration = calibration.generic()
    elif needed == "persona":
        inputs.persona_sequences = calibration.persona()
    scorer = get_scorer(prune.method)
    importance = clock.run("score", f"Scoring channels and heads ({prune.method})", lambda: scorer(inputs))
    model.to("cpu")
    plan = make_plan(importance, prune.ffn_sparsity, prune.head_sparsity, prune.uniform)
    if plan_file:
        atomic_write_json(plan_file, {"key": key_of(cache_at.plan_key), "plan": plan.to_json(), "log": inputs.log})
    return plan, inputs.log, inputs.dense_answer_logprobs


def train_model(model, recipe: Recipe, sequences: list[Sequence], teacher: list[Target] | None, device: str,
                clock: StageClock, healed: Path | None, stage: str, groups: list[str] | None = None) -> list[float]:
    """Finetune the kept weights toward `teacher` on `sequences` (healing or baking; `groups` as ppgguf.pruning.heal
    takes them); kept at `healed`."""
    if healed and healed.is_file():
        clock.progress("Reusing the trained weights from the run directory")
        model.load_state_dict(load_file(str(healed)), strict=False)
        return read_json(healed.with_suffix(".json"))
    train = recipe.train
    what = "Baking the persona into the weights" if stage == "bake" else "Healing the kept weights"
    steps, lr = (train.bake_steps, train.bake_lr) if stage == "bake" else (train.heal_steps, train.heal_lr)
    vectors_only = train.bakes_vectors_only  # no adapters then: nothing else trains
    history = clock.run(
        stage, f"{what} ({steps} steps)",
        lambda: heal(model, sequences, teacher, steps, train.batch_size, lr, recipe.prune.seed, device,
                     on_step=step_reporter(what.split()[0], clock.progress), train_embeddings=train.train_embeddings,
                     adapter_rank=0 if vectors_only else train.adapter_rank, vectors_only=vectors_only, groups=groups),
    )
    if healed:
        tmp = healed.with_name(healed.name + ".partial")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()
                   if k != "lm_head.weight" or not model.config.tie_word_embeddings}, str(tmp))
        atomic_write_json(healed.with_suffix(".json"), history)
        tmp.replace(healed)
    return history


def _healed_file(cache_at: RunCache | None) -> Path | None:
    # Healing changes the weights, not the plan: its settings key only what comes after surgery.
    return cache_at.directory / f"healed-{key_of(cache_at.weights_key)}.safetensors" if cache_at else None
