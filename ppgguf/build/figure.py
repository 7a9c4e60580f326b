"""A one-page picture of a build: what each layer kept, and how much smaller the model became."""

from __future__ import annotations

from pathlib import Path

WIDTH_KEYS = ("n_ff", "n_head", "n_head_kv")
DENSE_STYLE = {"color": "#d1495b", "lw": 1.5, "ls": "--"}


def layer_widths(report: dict) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
    """The per-layer widths the figure draws: kept (`report["widths"]`) and dense (`report["dense_widths"]`).

    A report written before builds recorded the dense widths gives None for them: no dense line is
    drawn then, rather than a guess.
    """
    def columns(rows: list[dict]) -> dict[str, list[int]]:
        return {key: [int(row[key]) for row in rows] for key in WIDTH_KEYS}

    dense = report.get("dense_widths")
    return columns(report["widths"]), (columns(dense) if dense else None)


def write_build_figure(report: dict, path: str | Path) -> Path:
    """Write a PNG of the build report from `ppgguf.build.pipeline.build` to `path`; returns the path.

    Left: kept FFN width per layer (bars) against the dense width (line), kept query heads and KV
    heads per layer (bars on a second axis) against the dense query heads. Right: parameters and
    file size, dense vs pruned.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    recipe = report.get("recipe", {})
    fig = plt.figure(figsize=(11, 5.2), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[3.2, 1], height_ratios=[1.6, 1])
    ax_ff = fig.add_subplot(grid[0, 0])
    ax_h = fig.add_subplot(grid[1, 0], sharex=ax_ff)
    ax_size = fig.add_subplot(grid[:, 1])
    _draw_widths(ax_ff, ax_h, *layer_widths(report))
    _draw_size(ax_size, report)
    for ax in (ax_ff, ax_h, ax_size):
        ax.spines[["top", "right"]].set_visible(False)

    title = report.get("character", "")
    knobs = (
        f"{recipe.get('method', '?')}, FFN sparsity {recipe.get('ffn_sparsity', '?')}, "
        f"head sparsity {recipe.get('head_sparsity', '?')}, base {recipe.get('base', '?')}"
    )
    # A name or a path is text, not matplotlib mathtext: a `$` in it is a dollar sign.
    fig.suptitle(f"{title}: {knobs}".replace("$", r"\$"), fontsize=11, x=0.01, ha="left")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.png")
    try:
        fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    tmp.replace(path)
    return path


def _draw_widths(ax_ff, ax_h, kept: dict[str, list[int]], dense: dict[str, list[int]] | None) -> None:
    from matplotlib.ticker import MaxNLocator

    layers = list(range(len(kept["n_ff"])))
    ax_ff.bar(layers, kept["n_ff"], color="#3a7bd5", label="kept FFN channels")
    if dense:
        _dense_line(ax_ff, layers, dense["n_ff"])
        ax_ff.set_ylim(0, max(dense["n_ff"]) * 1.15)
    ax_ff.set_ylabel("FFN width")
    ax_ff.legend(loc="upper right", fontsize=8, frameon=False, ncol=2)
    ax_ff.tick_params(labelbottom=False)
    ax_ff.set_title("kept per layer", loc="left", fontsize=10)

    offset = 0.2
    ax_h.bar([i - offset for i in layers], kept["n_head"], width=0.4, color="#2a9d8f", label="query heads")
    ax_h.bar([i + offset for i in layers], kept["n_head_kv"], width=0.4, color="#e9c46a", label="KV heads")
    if dense:
        _dense_line(ax_h, layers, dense["n_head"])
        ax_h.set_ylim(0, max(dense["n_head"]) * 1.35)
    ax_h.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_h.set_ylabel("heads")
    ax_h.set_xlabel("layer")
    ax_h.legend(loc="upper right", fontsize=8, frameon=False, ncol=3)
    if len(layers) > 16:
        ax_h.set_xticks(layers[:: max(1, len(layers) // 15)])
    else:
        ax_h.set_xticks(layers)


def _dense_line(ax, layers: list[int], values: list[int]) -> None:
    """The dense width: one dashed line when every layer has the same, else a dashed step per layer."""
    if len(set(values)) == 1:
        ax.axhline(values[0], label=f"dense ({values[0]})", **DENSE_STYLE)
    else:
        ax.step(layers, values, where="mid", label="dense", **DENSE_STYLE)


def _draw_size(ax, report: dict) -> None:
    """Parameters (millions), dense and pruned, and the file size of the output."""
    params = report.get("parameters", {})
    dense_params = params.get("dense") or 0
    pruned_params = params.get("pruned") or 0
    values = [dense_params / 1e6, pruned_params / 1e6]
    bars = ax.bar(["dense", "pruned"], values, color=["#9aa5b1", "#3a7bd5"], width=0.6)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.1f}M", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel("parameters (millions)")
    ax.set_ylim(0, max(values + [1e-9]) * 1.18)
    kept = pruned_params / dense_params if dense_params else float("nan")
    file_mib = report.get("file_bytes", 0) / 2**20
    quant = report.get("recipe", {}).get("quant", "?")
    ax.set_title(f"{kept:.0%} of parameters kept\nfile {file_mib:.1f} MiB ({quant})", fontsize=10)
