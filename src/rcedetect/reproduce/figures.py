"""The paper's figures as PNGs, drawn from the cell JSON only (matplotlib, Agg backend).

    make_figures(records, out_dir) -> {figure name: path}

`records` maps cell names to the records of `CellStore.records()`. A figure whose cells are missing
is skipped (a partial run still renders what it has).
"""

from pathlib import Path

import numpy as np

from ..names import Metric, Norm, Objective
from . import paper_values as paper
from . import schema
from .schema import FIG3_ATTACKS, OBJECTIVES, TABLE2_ATTACKS

COLORS = {Objective.CE: "#d62728", Objective.RCE: "#1f77b4"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window (also on machines with a display)
    import matplotlib.pyplot as plt

    return plt


def _result(records, name):
    record = records.get(name)
    return None if record is None else record["result"]


def _save(fig, path: Path) -> Path:
    """Render `fig` as PNG in memory, then write it through the one atomic-write path."""
    import io

    from ..files import atomic_write_bytes

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _depth(records, objective=Objective.CE):
    """Depth of the main (attacked) model: the smaller of the trained depths."""
    depths = [r["result"]["depth"] for name, r in records.items() if schema.kind(name) == schema.TRAIN]
    return min(depths) if depths else 32


def figure1_tsne(records, out: Path):
    results = [_result(records, schema.tsne_cell(o)) for o in OBJECTIVES]
    if any(r is None for r in results):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    cmap = plt.get_cmap("tab10")
    for ax, obj, res in zip(axes, OBJECTIVES, results):
        labels = np.asarray(res["labels"])
        ax.scatter(res["x"], res["y"], c=[cmap(int(l)) for l in labels], s=4, linewidths=0)
        ax.set_title(f"ResNet-{_depth(records, obj)} ({obj.display}): t-SNE of {res['n']} test features")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=str(i)) for i in range(10)]
    fig.legend(handles=handles, loc="center right", title="class", fontsize=8)
    return _save(fig, out / "figure1_tsne.png")


def figure3_accuracy(records, out: Path):
    attacks = [a for a in FIG3_ATTACKS if all(_result(records, schema.fig3_cell(a, o)) is not None for o in OBJECTIVES)]
    if not attacks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.6 * len(attacks), 3.4), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for obj in OBJECTIVES:
            res = _result(records, schema.fig3_cell(attack, obj))
            # eps = 0 is the clean accuracy of the same images.
            ax.plot([0.0] + list(res["eps"]), np.asarray([res["clean_accuracy"]] + list(res["accuracy"])) * 100,
                    "o-", color=COLORS[obj],
                    label=f"ResNet-{_depth(records, obj)} ({obj.display})")
        res = _result(records, schema.fig3_cell(attack, Objective.CE))
        ax.set_title(f"{attack.display} (n = {res['n']})")
        ax.set_xlabel("theta (per-feature offset)" if res.get("x_axis") == "theta" else "eps (L-inf, [0, 1] units)")
        ax.set_ylabel("accuracy on adversarial examples (%)")
        ax.set_ylim(-2, 102)
        # Ticks at the cell's own grid (e.g. 0.005-0.04 on CIFAR-10), however fine it is.
        _grid_ticks(ax, [0.0] + list(res["eps"]))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / "figure3_accuracy_vs_eps.png")


def _grid_ticks(ax, grid, max_labels: int = 8):
    """x ticks at every grid point, labelled with as many decimals as the grid needs; with a dense grid
    only every k-th point is labelled so that the labels never overlap."""
    grid = sorted(set(float(g) for g in grid))
    decimals = max(_decimals(g) for g in grid)
    step = max(1, -(-len(grid) // max_labels))
    ax.set_xticks(grid)
    ax.set_xticklabels([f"{g:.{decimals}f}" if i % step == 0 or i == len(grid) - 1 else ""
                        for i, g in enumerate(grid)], fontsize=7, rotation=45 if decimals >= 3 else 0)


def _decimals(value: float, most: int = 4) -> int:
    for d in range(most + 1):
        if abs(round(value, d) - value) < 1e-9:
            return d
    return most


def figure4_examples(records, out: Path):
    results = [_result(records, schema.table3_cell(0, o)) for o in OBJECTIVES]
    if any(r is None or schema.FIGURE4 not in r for r in results):
        return None
    plt = _plt()
    clean = np.asarray(results[0][schema.FIGURE4]["clean"], dtype=np.uint8)
    rows = [("Normal", clean, None)] + [
        (o.display, np.asarray(r[schema.FIGURE4]["adversarial"], dtype=np.uint8), r[schema.FIGURE4])
        for o, r in zip(OBJECTIVES, results)]
    k = clean.shape[0]
    fig, axes = plt.subplots(3, k, figsize=(1.3 * k, 4.3), squeeze=False)
    for row, (name, images, info) in enumerate(rows):
        for col in range(k):
            ax = axes[row][col]
            img = images[col]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if info is not None:
                # A failed C&W-wb attack returns its input unchanged: say so instead of showing a "clean" tile.
                dist = info["distortion"][col]
                failed = dist is not None and dist == 0
                ax.set_title("attack failed" if failed else f"{dist:.1f}", fontsize=7,
                             color="#d62728" if failed else "black")
            if col == 0:
                ax.set_ylabel(name)
    fig.suptitle("C&W-wb examples (title: RMS distortion, 0-255 scale; \"attack failed\": image unchanged)", fontsize=9)
    return _save(fig, out / "figure4_cwwb_examples.png")


def _objective_curves(records, cell_name, x_key: str, y_key: str, *, y_scale: float, xlabel: str, ylabel: str,
                      title: str, filename: str, out: Path, decorate=None):
    """One line per objective (CE, RCE): result[y_key] * y_scale against result[x_key] of `cell_name(objective)`."""
    results = [_result(records, cell_name(o)) for o in OBJECTIVES]
    if any(r is None for r in results):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for obj, res in zip(OBJECTIVES, results):
        order = np.argsort(res[x_key])
        ax.plot(np.asarray(res[x_key])[order], np.asarray(res[y_key])[order] * y_scale, "o-", color=COLORS[obj],
                label=f"ResNet-{_depth(records, obj)} ({obj.display})")
    if decorate is not None:
        decorate(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (n = {results[0]['n']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / filename)


def appendix_figure1_rand(records, out: Path):
    return _objective_curves(
        records, schema.rand_cell, "eps", "error", y_scale=100, out=out, filename="appendix_figure1_rand.png",
        xlabel="RAND noise eps (U(-eps, eps), [0, 1] units)", ylabel="test error (%)", title="Error on noisy examples",
        decorate=lambda ax: ax.axvline(paper.APPENDIX_RAND_EPS, color="gray", ls=":", lw=1,
                                       label=f"paper's eps = {paper.APPENDIX_RAND_EPS:g}"))


def _counted_kd(res):
    pe = res[schema.PER_EXAMPLE]
    return np.asarray(pe[schema.ADV_SCORES][Metric.KD])[schema.counted(pe)]


# The x-range of the K-density histograms: a few far outliers (e.g. one adversarial example with a
# tiny K-density) would otherwise squeeze every distribution into one bin. The range is the pooled
# 1st-99th percentiles widened by CLIP_MARGIN of their span (within the data's own range), so that
# only values well outside the bulk are clipped.
CLIP_PERCENTILES = (1.0, 99.0)
CLIP_MARGIN = 0.1


def _robust_range(values):
    """The histogram x-range of pooled `values` (see CLIP_PERCENTILES); the full range if degenerate."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    p_lo, p_hi = np.percentile(finite, CLIP_PERCENTILES)
    if not p_hi > p_lo:
        return float(finite.min()), float(finite.max())
    margin = CLIP_MARGIN * (p_hi - p_lo)
    return float(max(finite.min(), p_lo - margin)), float(min(finite.max(), p_hi + margin))


def appendix_figures2_3_histograms(records, out: Path):
    if any(_result(records, schema.rand_cell(o)) is None for o in OBJECTIVES):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, obj in zip(axes, OBJECTIVES):
        hist = _result(records, schema.rand_cell(obj))[schema.HIST]
        series = [("normal", np.asarray(hist["kd_clean"])), (f"noisy (RAND {hist['eps']:g})", np.asarray(hist["kd_noisy"]))]
        for attack in TABLE2_ATTACKS:
            res = _result(records, schema.table2_cell(attack, obj))
            if res is not None and schema.PER_EXAMPLE in res:
                values = _counted_kd(res)
                if values.size:
                    series.append((attack.display, values))
        lo, hi = _robust_range(np.concatenate([v for _, v in series]))
        bins = np.linspace(lo, hi, 40) if hi > lo else 10
        clipped_total = 0
        for i, (name, values) in enumerate(series):
            style = {"histtype": "stepfilled", "alpha": 0.35} if i < 2 else {"histtype": "step", "lw": 1.3}
            finite = values[np.isfinite(values)] if values.size else values
            clipped = int(values.size - np.count_nonzero((finite >= lo) & (finite <= hi)))
            clipped_total += clipped
            # Outliers go into the edge bins (and -inf, a K-density underflow, into the lowest).
            shown = np.clip(np.where(np.isfinite(values), values, lo), lo, hi)
            extra = f", {clipped} clipped" if clipped else ""
            ax.hist(shown, bins=bins, label=f"{name} ({values.size}{extra})", **style)
        ax.set_xlabel("log K-density (natural log)")
        ax.set_ylabel("number of images")
        note = (f"\n{clipped_total} outliers (beyond the pooled {CLIP_PERCENTILES[0]:g}-{CLIP_PERCENTILES[1]:g}th "
                f"percentiles + {100 * CLIP_MARGIN:g} %) drawn in the edge bins" if clipped_total else "")
        ax.set_title(f"ResNet-{_depth(records, obj)} ({obj.display}){note}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "appendix_figures2_3_kd_histograms.png")


def appendix_figure4_fixed_c(records, out: Path):
    def decorate(ax):
        ax.set_xscale("log")
        ax.set_ylim(-2, 102)

    return _objective_curves(
        records, schema.cwc_cell, "c", "accuracy", y_scale=100, out=out, filename="appendix_figure4_cw_fixed_c.png",
        xlabel="C&W constant c (no binary search)", ylabel="accuracy under C&W (%)", title="C&W with a fixed c",
        decorate=decorate)


def worst_case_curves(records, out: Path):
    """Worst-case robust accuracy with rejection vs eps: one row per norm, one column per detector."""
    results = [(o, _result(records, schema.worst_case_cell(o))) for o in OBJECTIVES]
    results = [(o, r) for o, r in results if r is not None]
    if not results:
        return None
    plt = _plt()
    norms = [nm for nm in (Norm.LINF, Norm.L2) if nm in results[0][1]["budget"]["eps"]]
    metrics = list(results[0][1]["detectors"])
    fig, axes = plt.subplots(len(norms), len(metrics), figsize=(3.4 * len(metrics), 3.0 * len(norms)), squeeze=False)
    for row, norm in zip(axes, norms):
        for ax, metric in zip(row, metrics):
            for obj, res in results:
                eps = res["budget"]["eps"][norm]
                entry = res["detectors"].get(metric)
                if entry is None:
                    continue
                ax.plot(eps, np.asarray(entry[schema.ROBUST_ACCURACY][norm], dtype=float) * 100, "o-",
                        color=COLORS[obj], label=f"ResNet-{res['depth']} ({obj.display})")
                und = res.get("undefended_robust_accuracy", {}).get(norm)
                if und is not None:
                    ax.plot(eps, np.asarray(und, dtype=float) * 100, ":", color=COLORS[obj],
                            label=f"{obj.display}, no detector")
            ax.set_title(f"{Metric.coerce(metric).display}, FPR {100 * results[0][1]['fpr']:g} %", fontsize=9)
            ax.set_xlabel(f"eps ({Norm.coerce(norm).display})")
            ax.set_ylabel("robust acc. with rejection (%)")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "worst_case_curves.png")


FIGURES = {
    "figure1": figure1_tsne,
    "figure3": figure3_accuracy,
    "figure4": figure4_examples,
    "appendix_figure1": appendix_figure1_rand,
    "appendix_figures2_3": appendix_figures2_3_histograms,
    "appendix_figure4": appendix_figure4_fixed_c,
    "adaptive": worst_case_curves,
}


def make_figures(records: dict, out_dir) -> dict:
    """Draw every figure whose cells exist into `out_dir`; returns {figure name: path}."""
    out = Path(out_dir)
    made = {}
    for name, draw in FIGURES.items():
        path = draw(records, out)
        if path is not None:
            made[name] = path
    return made
