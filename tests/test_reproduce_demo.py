"""The committed demo report (docs/demo-mnist-quick) re-renders from its cells byte for byte."""

import re
import shutil
from pathlib import Path

from rcedetect.reproduce import render_report

DEMO = Path(__file__).resolve().parents[1] / "docs" / "demo-mnist-quick"
# The one line that depends on when the report is rendered, not on the cells.
RENDERED = re.compile(r"Rendered \d{4}-\d\d-\d\d \d\d:\d\d UTC")


def test_demo_report_rerenders_identically_from_its_cells(tmp_path, monkeypatch):
    # Same relative run folder as the committed rendering: the report names it.
    run_dir = Path("docs") / DEMO.name
    monkeypatch.chdir(tmp_path)
    (tmp_path / run_dir / "cells").parent.mkdir(parents=True)
    shutil.copytree(DEMO / "cells", tmp_path / run_dir / "cells")
    shutil.copy(DEMO / "run.json", tmp_path / run_dir / "run.json")
    paths = render_report(run_dir)
    ours = RENDERED.sub("Rendered <time> UTC", (tmp_path / paths["markdown"]).read_text())
    committed = RENDERED.sub("Rendered <time> UTC", (DEMO / "report.md").read_text())
    assert ours.count("Rendered <time> UTC") == 1
    assert ours == committed
    assert set(paths["figures"]) == {"figure1", "figure3", "figure4", "appendix_figure1", "appendix_figures2_3",
                                     "appendix_figure4", "adaptive"}
