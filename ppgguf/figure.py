"""A one-page picture of a build: what each layer kept, and how much smaller the model became."""

from __future__ import annotations

from pathlib import Path


def write_build_figure(report: dict, path: str | Path) -> Path:
    """Write a PNG of the build report from `ppgguf.build.build` to `path`; returns the path.

    Left: kept FFN width per layer (bars) against the dense width (line), kept query heads and KV
    heads per layer (bars on a second axis). Right: parameters and file size, dense vs pruned.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    widths = report["widths"]
    layers = list(range(len(widths)))
    params = report.get("parameters", {})
    dense_params = params.get("dense") or 0
    pruned_params = params.get("pruned") or 0
    recipe = report.get("recipe", {})
    dense_ff = _dense_width(report, "n_ff")
    dense_heads = _dense_width(report, "n_head")

    fig = plt.figure(figsize=(11, 5.2), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[3.2, 1], height_ratios=[1.6, 1])
    ax_ff = fig.add_subplot(grid[0, 0])
    ax_h = fig.add_subplot(grid[1, 0], sharex=ax_ff)
    ax_size = fig.add_subplot(grid[:, 1])

    ax_ff.bar(layers, [w["n_ff"] for w in widths], color="#3a7bd5", label="kept FFN channels")
    if dense_ff:
        ax_ff.axhline(dense_ff, color="#d1495b", lw=1.5, ls="--", label=f"dense ({dense_ff})")
        ax_ff.set_ylim(0, dense_ff * 1.15)
    ax_ff.set_ylabel("FFN width")
    ax_ff.legend(loc="upper right", fontsize=8, frameon=False, ncol=2)
    ax_ff.tick_params(labelbottom=False)
    ax_ff.set_title("kept per layer", loc="left", fontsize=10)

    offset = 0.2
    ax_h.bar([i - offset for i in layers], [w["n_head"] for w in widths], width=0.4, color="#2a9d8f", label="query heads")
    ax_h.bar([i + offset for i in layers], [w["n_head_kv"] for w in widths], width=0.4, color="#e9c46a", label="KV heads")
    if dense_heads:
        ax_h.axhline(dense_heads, color="#d1495b", lw=1.5, ls="--", label=f"dense ({dense_heads})")
        ax_h.set_ylim(0, dense_heads * 1.35)
    ax_h.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_h.set_ylabel("heads")
    ax_h.set_xlabel("layer")
    ax_h.legend(loc="upper right", fontsize=8, frameon=False, ncol=3)
    if len(layers) > 16:
        ax_h.set_xticks(layers[:: max(1, len(layers) // 15)])
    else:
        ax_h.set_xticks(layers)

    # size panel: parameters (millions), and the file size of the output
    labels = ["dense", "pruned"]
    values = [dense_params / 1e6, pruned_params / 1e6]
    bars = ax_size.bar(labels, values, color=["#9aa5b1", "#3a7bd5"], width=0.6)
    for bar, value in zip(bars, values):
        ax_size.annotate(f"{value:.1f}M", (bar.get_x() + bar.get_width() / 2, value),
                         ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax_size.set_ylabel("parameters (millions)")
    ax_size.set_ylim(0, max(values + [1e-9]) * 1.18)
    kept = pruned_params / dense_params if dense_params else float("nan")
    file_mib = report.get("file_bytes", 0) / 2**20
    ax_size.set_title(f"{kept:.0%} of parameters kept\nfile {file_mib:.1f} MiB ({recipe.get('quant', '?')})",
                      fontsize=10)

    for ax in (ax_ff, ax_h, ax_size):
        ax.spines[["top", "right"]].set_visible(False)

    title = report.get("character", "")
    knobs = (
        f"{recipe.get('method', '?')}, FFN sparsity {recipe.get('ffn_sparsity', '?')}, "
        f"head sparsity {recipe.get('head_sparsity', '?')}, base {recipe.get('base', '?')}"
    )
    fig.suptitle(f"{title}: {knobs}", fontsize=11, x=0.01, ha="left")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.png")
    try:
        fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    tmp.replace(path)
    return path


def _dense_width(report: dict, key: str) -> int | None:
    """The dense model's width for `key`: from the report if it says, else the widest layer."""
    dense = report.get("dense_widths")
    if isinstance(dense, dict) and dense.get(key):
        return int(dense[key])
    if isinstance(dense, list) and dense and dense[0].get(key):
        return max(int(w[key]) for w in dense)
    table = {"n_ff": "intermediate_size", "n_head": "num_attention_heads"}
    base = report.get("base", {})
    if isinstance(base, dict) and base.get(table[key]):
        return int(base[table[key]])
    return _infer_from_parameters(report, key)


def _infer_from_parameters(report: dict, key: str) -> int | None:
    """Without the dense widths in the report, infer the dense FFN width from the parameter counts.

    Removing FFN channels removes 3 * hidden parameters per channel and per layer, and removing heads
    removes 2 * hidden * head_dim (Q, O) plus 2 * hidden * head_dim per KV head (K, V): with the
    known sparsity this is enough for the common case of uniform widths.
    """
    widths = report.get("widths") or []
    recipe = report.get("recipe", {})
    if not widths:
        return None
    if key == "n_ff":
        sparsity = float(recipe.get("ffn_sparsity") or 0.0)
    else:
        sparsity = float(recipe.get("head_sparsity") or 0.0)
    widest = max(int(w[key]) for w in widths)
    if sparsity <= 0:
        return widest
    guess = widest / (1.0 - sparsity)
    # round to the nearest multiple the planner would have kept (32 for FFN channels, 1 for heads)
    step = 32 if key == "n_ff" else 1
    return int(round(guess / step) * step) or widest
