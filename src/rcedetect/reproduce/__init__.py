"""One-command reproduction of Pang et al. 2018: every table and figure as JSON cells, then a report.

    from rcedetect.reproduce import Reproduction, render_report
    Reproduction("mnist", "quick", "runs/mnist-quick").run()
    render_report("runs/mnist-quick")       # report.md, report.html, figures/*.png

See `pipeline` for the cells, `presets` for the budgets, `cells` for the resumable store.
"""

from .cells import CellStore
from .pipeline import Reproduction
from .presets import PRESET_NAMES, ReproPreset, get_preset

__all__ = ["CellStore", "Reproduction", "ReproPreset", "get_preset", "PRESET_NAMES", "render_report"]


def render_report(run_dir, **kwargs):
    """Render RUN/report.md, RUN/report.html and RUN/figures/*.png from the run's JSON (see `report`)."""
    from .report import render_report as _render

    return _render(run_dir, **kwargs)
