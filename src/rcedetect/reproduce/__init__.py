"""One-command reproduction of Pang et al. 2018: every table and figure as JSON cells, then a report.

    from rcedetect.reproduce import Reproduction, render_report
    Reproduction("mnist", "quick", "runs/mnist-quick").run()
    render_report("runs/mnist-quick")       # report.md, report.html, figures/*.png

Architecture (one home per concept):
    presets    ReproPreset; paper(dataset) spelled once, quick / toy as overrides of it
    costs      CostModel: estimated seconds per forward / gradient / training step (the ETA)
    schema     every cell name and shared result key (producers, report and figures import it)
    context    RunContext: data, permutation, models (trained only by `train`), K-density, caches
    examples   the attack runner: adversarial examples in cached, resumable chunks
    cells/     one class per cell kind: name, config(ctx), compute(ctx, progress), cost(ctx, costs)
    store      CellStore: RUN/cells/<name>.json + RUN/cache (skip a cell whose config is stored)
    run        Reproduction: plan -> run.json -> for each cell: store.compute(cell) (+ progress)
    report, figures   read run.json + cells/*.json only (never models) -> report.md/.html, PNGs
Flow: `rcedetect reproduce` (cli.reproduce) -> Reproduction.run() -> RUN/cells/*.json -> render_report.
"""

from .presets import PRESET_NAMES, ReproPreset, get_preset
from .run import Reproduction
from .store import CellStore

__all__ = ["CellStore", "Reproduction", "ReproPreset", "get_preset", "PRESET_NAMES", "render_report"]


def render_report(run_dir, **kwargs):
    """Render RUN/report.md, RUN/report.html and RUN/figures/*.png from the run's JSON (see `report`)."""
    from .report import render_report as _render

    return _render(run_dir, **kwargs)
