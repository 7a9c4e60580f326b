"""Plans, scorers and surgery on tiny random llama / qwen2 models (no llama.cpp involved)."""

from __future__ import annotations

import pytest
import torch

from ppgguf.errors import UserError
from ppgguf.pruning.coupling import COLUMNS, ROWS, layer_couplings
from ppgguf.pruning.importance import SCORERS, ScoringInputs, get_scorer
from ppgguf.pruning.plan import FFN_MULTIPLE, Importance, PruningPlan, make_plan
from ppgguf.pruning.surgery import apply_plan, layer_widths, parameter_count
from ppgguf.pruning.surgery import predicted_parameters

from tiny_models import HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS

HEAD_DIM = HIDDEN // HEADS
PER_GROUP = HEADS // KV_HEADS


def random_importance(layers=LAYERS, width=INTERMEDIATE, groups=KV_HEADS, seed=0) -> Importance:
    g = torch.Generator().manual_seed(seed)
    return Importance(
        ffn=[torch.rand(width, generator=g) for _ in range(layers)],
        heads=[torch.rand(groups, generator=g) for _ in range(layers)],
    )


def per_layer_plan(model) -> PruningPlan:
    """Different FFN widths per layer, one KV group dropped in every layer (heads stay uniform)."""
    imp = SCORERS["magnitude"](ScoringInputs(model=model))
    plan = make_plan(imp, 0.5, 0.5, uniform=True)
    widths = [64, 192, 96][: len(plan.ffn_keep)]
    ffn_keep = [sorted(torch.argsort(s, descending=True)[:w].tolist()) for s, w in zip(imp.ffn, widths)]
    return PruningPlan(ffn_keep=ffn_keep, kv_keep=plan.kv_keep)


def uniform_plan(model) -> PruningPlan:
    return make_plan(SCORERS["magnitude"](ScoringInputs(model=model)), 0.5, 0.5, uniform=True)


# ---------------------------------------------------------------- plan


@pytest.mark.parametrize("sparsity,kept", [(0.0, 256), (0.25, 192), (0.5, 128), (0.75, 64), (0.8, 64), (0.87, 32)])
def test_make_plan_uniform_keeps_k_per_layer(sparsity, kept):
    imp = random_importance()
    plan = make_plan(imp, sparsity, 0.0)
    assert plan.ffn_widths == [kept] * LAYERS
    assert all(w % FFN_MULTIPLE == 0 for w in plan.ffn_widths)
    assert plan.kv_groups == [KV_HEADS] * LAYERS
    assert plan.uniform
    for keep, scores in zip(plan.ffn_keep, imp.ffn):
        assert keep == sorted(keep) and len(set(keep)) == len(keep)
        # the kept channels are the top-scoring ones
        assert set(keep) == set(torch.argsort(scores, descending=True)[:kept].tolist())


def test_make_plan_heads_keep_top_groups():
    imp = random_importance(groups=4, seed=3)
    plan = make_plan(imp, 0.0, 0.5)
    assert plan.kv_groups == [2] * LAYERS
    for keep, scores in zip(plan.kv_keep, imp.heads):
        assert set(keep) == set(torch.argsort(scores, descending=True)[:2].tolist())


@pytest.mark.parametrize("ffn,heads", [(-0.1, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, -0.5), (1.5, 0.0)])
def test_make_plan_rejects_sparsity_out_of_range(ffn, heads):
    with pytest.raises(UserError, match="sparsity"):
        make_plan(random_importance(), ffn, heads)


def test_make_plan_rejects_too_few_channels_or_no_head():
    with pytest.raises(UserError, match="fewer than 32"):
        make_plan(random_importance(), 0.9, 0.0)  # 25.6 of 256 channels
    with pytest.raises(UserError, match="no attention head"):
        make_plan(random_importance(groups=2), 0.0, 0.8)  # 0.4 of 2 groups


def test_make_plan_per_layer_gives_differing_widths():
    g = torch.Generator().manual_seed(0)
    # layer 0's scores are spread out, layer 1's nearly flat: a global ranking keeps more of layer 1
    ffn = [torch.rand(INTERMEDIATE, generator=g) ** 4, 1.0 + 0.01 * torch.rand(INTERMEDIATE, generator=g)]
    imp = Importance(ffn=ffn, heads=[torch.rand(KV_HEADS, generator=g) for _ in range(2)])
    plan = make_plan(imp, 0.5, 0.0, uniform=False)
    assert len(set(plan.ffn_widths)) > 1, plan.ffn_widths
    assert plan.ffn_widths[1] > plan.ffn_widths[0]
    assert all(w % FFN_MULTIPLE == 0 and FFN_MULTIPLE <= w <= INTERMEDIATE for w in plan.ffn_widths)
    assert abs(sum(plan.ffn_widths) - 0.5 * 2 * INTERMEDIATE) <= 2 * FFN_MULTIPLE
    assert not plan.uniform
    assert PruningPlan.from_json(plan.to_json()) == plan


# ---------------------------------------------------------------- scorers


@pytest.mark.parametrize("name", ["magnitude", "wanda-sp", "random"])
def test_scorer_shapes_and_determinism(name, tiny_llama, token_sequences):
    model = tiny_llama.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = ScoringInputs(model=model, calibration=token_sequences[:2], seed=7)
    a, b = SCORERS[name](inputs), SCORERS[name](inputs)
    assert len(a.ffn) == len(a.heads) == LAYERS
    for f, h, f2, h2 in zip(a.ffn, a.heads, b.ffn, b.heads):
        assert f.shape == (INTERMEDIATE,) and h.shape == (KV_HEADS,)
        assert torch.isfinite(f).all() and torch.isfinite(h).all()
        assert torch.equal(f, f2) and torch.equal(h, h2)
    # scorers never modify the model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert get_scorer(name) is SCORERS[name]


def test_random_scorer_depends_on_seed(tiny_llama):
    a = SCORERS["random"](ScoringInputs(model=tiny_llama.model, seed=1))
    b = SCORERS["random"](ScoringInputs(model=tiny_llama.model, seed=2))
    assert not torch.equal(a.ffn[0], b.ffn[0])


def test_unknown_scorer_is_user_error():
    with pytest.raises(UserError, match="unknown method"):
        get_scorer("oracle")


@torch.no_grad()
def test_wanda_sp_picks_channel_with_large_activation(tiny_llama, token_sequences):
    model = tiny_llama.fresh()
    layer = model.model.layers[1]
    channel, group = 77, 1
    # channel 77's input to down_proj becomes huge; KV group 1's attention output likewise
    layer.mlp.up_proj.weight[channel] *= 100.0
    layer.self_attn.v_proj.weight[group * HEAD_DIM:(group + 1) * HEAD_DIM] *= 100.0
    importance = SCORERS["wanda-sp"](ScoringInputs(model=model, calibration=token_sequences[:2]))
    assert int(importance.ffn[1].argmax()) == channel
    assert int(importance.heads[1].argmax()) == group
    # wanda-sp is activation-aware: without calibration text it refuses
    with pytest.raises(ValueError):
        SCORERS["wanda-sp"](ScoringInputs(model=model, calibration=[]))


# ---------------------------------------------------------------- coupling


def test_coupling_names_every_projection_once_with_its_rows_or_columns(tiny):
    model = tiny.model
    for layer, (ffn, kv) in zip(model.model.layers, layer_couplings(model)):
        linears = {id(m) for m in layer.modules() if isinstance(m, torch.nn.Linear)}
        assert sorted(id(s.linear) for s in ffn.slices + kv.slices) == sorted(linears)
        assert [(s.name, s.axis) for s in ffn.slices] == [("gate_proj", ROWS), ("up_proj", ROWS), ("down_proj", COLUMNS)]
        assert ffn.consumer.name == "down_proj" and kv.consumer.name == "o_proj"
        q, k, v, o = kv.slices
        # KV group 1 owns query heads 2 and 3 (contiguous grouping), its own K and V head, their O columns
        group_1_heads = list(range(PER_GROUP * HEAD_DIM, 2 * PER_GROUP * HEAD_DIM))
        assert q.index([1]).tolist() == o.index([1]).tolist() == group_1_heads
        assert k.index([1]).tolist() == v.index([1]).tolist() == list(range(HEAD_DIM, 2 * HEAD_DIM))
        assert ffn.slices[0].index([5, 9]).tolist() == [5, 9]


# ---------------------------------------------------------------- surgery


@torch.no_grad()
def masked_dense_logits(dense, plan: PruningPlan, ids: torch.Tensor) -> torch.Tensor:
    """The dense model with removed FFN channels (gate rows) and heads (o_proj columns) zeroed."""
    for layer, ffn_keep, kv_keep in zip(dense.model.layers, plan.ffn_keep, plan.kv_keep):
        drop = torch.ones(layer.mlp.gate_proj.out_features, dtype=torch.bool)
        drop[ffn_keep] = False
        layer.mlp.gate_proj.weight[drop] = 0.0
        heads_kept = {g * PER_GROUP + j for g in kv_keep for j in range(PER_GROUP)}
        for h in range(HEADS):
            if h not in heads_kept:
                layer.self_attn.o_proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0.0
    return dense(ids).logits


@pytest.mark.parametrize("kind", ["uniform", "per-layer"])
@torch.no_grad()
def test_surgery_counts_config_and_masking_equivalence(tiny, kind, token_sequences):
    dense = tiny.fresh()
    dense_params = parameter_count(dense)
    assert predicted_parameters(dense) == dense_params
    plan = uniform_plan(dense) if kind == "uniform" else per_layer_plan(dense)

    pruned = apply_plan(tiny.fresh(), plan)
    widths = layer_widths(pruned)
    assert [w["n_ff"] for w in widths] == plan.ffn_widths
    assert [w["n_head_kv"] for w in widths] == plan.kv_groups
    assert [w["n_head"] for w in widths] == [g * PER_GROUP for g in plan.kv_groups]

    # parameters drop exactly as the widths predict
    removed_ffn = sum(3 * HIDDEN * (INTERMEDIATE - w) for w in plan.ffn_widths)
    removed_attn = sum(
        (2 * HIDDEN * HEAD_DIM) * PER_GROUP * (KV_HEADS - g) + 2 * HIDDEN * HEAD_DIM * (KV_HEADS - g)
        for g in plan.kv_groups
    )
    if tiny.family == "qwen2":
        removed_attn += sum((PER_GROUP + 2) * HEAD_DIM * (KV_HEADS - g) for g in plan.kv_groups)
    assert parameter_count(pruned) == predicted_parameters(pruned) == dense_params - removed_ffn - removed_attn

    # the config states the new sizes
    cfg = pruned.config
    assert cfg.ppgguf_ffn_widths == plan.ffn_widths
    assert cfg.ppgguf_kv_head_counts == plan.kv_groups
    assert cfg.ppgguf_head_counts == [g * PER_GROUP for g in plan.kv_groups]
    assert cfg.head_dim == HEAD_DIM
    if kind == "uniform":
        assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (128, 2, 1)

    # pruning == zeroing the same channels and heads in the dense model
    ids = torch.tensor([token_sequences[0]])
    expected = masked_dense_logits(dense, plan, ids)
    got = pruned(ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    # and it is not trivially equal to the unpruned model
    assert (tiny.model(ids).logits - got).abs().max() > 1e-2


def test_surgery_rejects_plan_with_wrong_layer_count(tiny_llama):
    plan = uniform_plan(tiny_llama.model)
    plan = PruningPlan(ffn_keep=plan.ffn_keep[:1], kv_keep=plan.kv_keep[:1])
    with pytest.raises(ValueError, match="layers"):
        apply_plan(tiny_llama.fresh(), plan)
