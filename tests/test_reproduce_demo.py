"""The committed demo report (docs/demo-mnist-quick) re-renders from its cells byte for byte."""

import json
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


def test_appendix_table1_names_each_cw_attacks_own_budget():
    # C&W and C&W-hc run different budgets in the quick preset (3 x 500, 2 x 800): each row of the
    # seconds-per-example table must name the budget its own Table 2 cell ran, read from that cell.
    report = (DEMO / "report.md").read_text()
    for attack, display in (("cw", "C&W"), ("cw-hc", "C&W-hc")):
        for obj in ("ce", "rce"):
            settings = json.loads((DEMO / "cells" / f"table2.{attack}.{obj}.json").read_text())["config"]["settings"]
            budget = f"{settings['binary_search_steps']} × {settings['max_iters']}"
            assert re.search(rf"^\| {re.escape(display)} \| {obj.upper()} \| {re.escape(budget)} \|", report, re.M), \
                (attack, obj, budget)
