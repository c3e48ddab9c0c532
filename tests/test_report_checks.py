"""The report's sanity checks (`reproduce.checks`) on hand-made cell records, and the report's
"Sanity checks" / "Protocol" sections, rendered from the committed demo cells (no model is trained)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from rcedetect.names import Attack, Metric, Objective
from rcedetect.reproduce import render_report, schema
from rcedetect.reproduce.checks import FAIL, MIN_COUNTED, NA, PASS, Check, sanity_checks, to_json
from rcedetect.reproduce.figures import _robust_range

DEMO = Path(__file__).resolve().parents[1] / "docs" / "demo-mnist-quick"
METRICS = [m.value for m in schema.METRICS]


def _table2(attack, *, success, n=100, counted=50, eps=None):
    return {"attack": attack, "n": n, "n_counted": counted, "eps": eps, "attack_success_rate": success,
            "clean_accuracy": 0.99, "adversarial_accuracy": 1 - success, "distortion": 10.0, "distortion_all": 9.0,
            schema.AUC: {m: 0.9 for m in METRICS}, schema.DETECTION_RATE: {m: 0.5 for m in METRICS},
            schema.ROBUST_ACCURACY: {m: 0.6 for m in METRICS}}


def good_records() -> dict:
    results = {}
    for obj in Objective:
        results[schema.fig3_cell(Attack.FGSM, obj)] = {
            "n": 20, "eps": [0.1, 0.2, 0.3], "accuracy": [0.8, 0.5, 0.3], "attack_success_rate": [0.2, 0.5, 0.7]}
        results[schema.fig3_cell(Attack.BIM, obj)] = {
            "n": 20, "eps": [0.1, 0.2, 0.3], "accuracy": [0.7, 0.3, 0.1], "attack_success_rate": [0.3, 0.7, 0.9]}
        for attack in schema.TABLE2_ATTACKS:
            eps = 0.16 if attack in (Attack.FGSM, Attack.BIM, Attack.ILCM, Attack.JSMA) else None
            success = {Attack.FGSM: 0.6, Attack.BIM: 0.9, Attack.CW: 1.0}.get(attack, 0.5)
            results[schema.table2_cell(attack, obj)] = _table2(attack, success=success, eps=eps)
        results[schema.table3_cell(0, obj)] = {
            "n": 20, "n_clean_correct": 20, "n_counted": 20, "success_percent": 95.0 if obj == "ce" else 40.0,
            "success_full_bank_percent": 50.0, "ratio_f2_positive_percent": 30.0,
            "ratio_f2_positive_attack_bank_percent": 5.0, "mean_distortion": 20.0, "mean_distortion_official": 19.0,
            "kd_auc": 0.7, "kd_rejected_percent": 10.0}
        results[schema.worst_case_cell(obj)] = {"detectors": {m: {"checks": {
            "gradient": {"status": PASS, "detail": "0 of 20", "value": 0.0},
            "restarts.linf": {"status": NA, "detail": "one restart", "value": None}}} for m in METRICS}}
    return {name: {"result": r} for name, r in results.items()}


def test_a_failing_worst_case_check_fails_its_sanity_check():
    records = good_records()
    records[schema.worst_case_cell("rce")]["result"]["detectors"]["kd"]["checks"]["gradient"]["status"] = FAIL
    assert _status(sanity_checks(records), "gradient-masking") == [PASS, FAIL]


def _status(checks, fragment):
    found = [c for c in checks if fragment in c.name]
    assert found, f"no check named like {fragment!r}"
    return [c.status for c in found]


def test_every_check_passes_on_a_sound_run():
    checks = sanity_checks(good_records())
    assert all(isinstance(c, Check) for c in checks)
    assert [c.status for c in checks] == [PASS] * len(checks), [(c.name, c.detail) for c in checks if c.status != PASS]
    assert json.loads(to_json(checks))[0] == checks[0].to_json()


def test_missing_cells_give_na_never_a_crash():
    checks = sanity_checks({})
    assert {c.status for c in checks} == {NA}
    assert all(c.meaning for c in checks)


def _mutated(cell, **changes):
    records = good_records()
    records[cell]["result"].update(changes)
    return sanity_checks(records)


def test_bim_weaker_than_fgsm_fails():
    checks = _mutated(schema.fig3_cell(Attack.BIM, Objective.CE), attack_success_rate=[0.1, 0.7, 0.9])
    assert _status(checks, "Figure 3 (CE)") == [FAIL] and _status(checks, "Figure 3 (RCE)") == [PASS]
    # Within one image (1/20) is tolerated.
    checks = _mutated(schema.fig3_cell(Attack.BIM, Objective.CE), attack_success_rate=[0.15, 0.7, 0.9])
    assert _status(checks, "Figure 3 (CE)") == [PASS]
    checks = _mutated(schema.table2_cell(Attack.BIM, Objective.RCE), attack_success_rate=0.4)
    assert _status(checks, "Table 2 (RCE)") == [FAIL]
    # Different eps are not comparable.
    checks = _mutated(schema.table2_cell(Attack.BIM, Objective.RCE), attack_success_rate=0.4, eps=0.04)
    assert _status(checks, "Table 2 (RCE)") == [NA]


def test_non_monotone_accuracy_grid_fails():
    checks = _mutated(schema.fig3_cell(Attack.FGSM, Objective.RCE), accuracy=[0.8, 0.5, 0.7])
    assert _status(checks, "non-increasing") == [PASS, FAIL]
    checks = _mutated(schema.fig3_cell(Attack.FGSM, Objective.RCE), accuracy=[0.8, 0.5, 0.54])  # < 1 image
    assert _status(checks, "non-increasing") == [PASS, PASS]


def test_sign_test_p_equals_scipy_binomtest():
    from scipy.stats import binomtest

    from rcedetect.reproduce.checks import sign_test_p
    for up, down in [(7, 2), (0, 0), (5, 0), (3, 9), (20, 6)]:
        expected = binomtest(up, up + down, 0.5, alternative="greater").pvalue if up + down else 1.0
        assert sign_test_p(up, down) == pytest.approx(expected, rel=1e-12)


def _paired(before_right, after_right, both_right, n=40):
    """Per-example correctness at two grid points: `before_right` only before, `after_right` only after."""
    c0 = [1] * before_right + [0] * after_right + [1] * both_right
    c1 = [0] * before_right + [1] * after_right + [1] * both_right
    pad = n - len(c0)
    return [c0 + [0] * pad, c1 + [0] * pad]


def test_a_rise_fails_only_when_the_paired_sign_test_is_significant():
    cell = schema.fig3_cell(Attack.JSMA, Objective.RCE)
    # 7 wrong -> right, 2 right -> wrong (the 24-image CIFAR-10 case): p = 0.09, chance.
    correct = _paired(2, 7, 10)
    records = good_records()
    records[cell] = {"result": {"n": 40, "eps": [0.03, 0.04], "accuracy": [12 / 40, 17 / 40], "correct": correct,
                                "attack_success_rate": [0.1, 0.1]}}
    check = [c for c in sanity_checks(records) if "non-increasing" in c.name and "RCE" in c.name][0]
    assert check.status == PASS, check.detail
    # 9 wrong -> right, 0 right -> wrong: p = 0.002, a real rise.
    records[cell]["result"].update(correct=_paired(0, 9, 10), accuracy=[10 / 40, 19 / 40])
    check = [c for c in sanity_checks(records) if "non-increasing" in c.name and "RCE" in c.name][0]
    assert check.status == FAIL and "9 wrong → right, 0 right → wrong" in check.detail
    # Grid given out of order: the check sorts by eps (and its correctness with it).
    records[cell]["result"].update(eps=[0.04, 0.03], correct=_paired(0, 9, 10)[::-1], accuracy=[19 / 40, 10 / 40])
    assert [c for c in sanity_checks(records) if "non-increasing" in c.name][1].status == FAIL


def test_weak_unbounded_attack_fails():
    checks = _mutated(schema.table2_cell(Attack.CW, Objective.CE), attack_success_rate=0.8)
    assert _status(checks, "unbounded") == [FAIL, PASS]


def test_cwwb_failing_on_ce_fails():
    checks = _mutated(schema.table3_cell(0, Objective.CE), success_percent=50.0)
    assert _status(checks, "C&W-wb") == [FAIL]


@pytest.mark.parametrize("value", [None, math.nan, math.inf, 1.5])
def test_broken_auc_fails(value):
    records = good_records()
    records[schema.table2_cell(Attack.FGSM, Objective.CE)]["result"][schema.AUC][Metric.CONFIDENCE] = value
    assert _status(sanity_checks(records), "finite") == [FAIL]


def test_none_is_allowed_without_counted_pairs():
    records = good_records()
    r = records[schema.table2_cell(Attack.JSMA, Objective.CE)]["result"]
    r.update(n_counted=0, distortion=None)
    r[schema.AUC] = {m: None for m in METRICS}
    checks = sanity_checks(records)
    assert _status(checks, "finite") == [PASS]
    assert _status(checks, "counted pairs") == [FAIL, PASS]


def test_few_counted_pairs_fail():
    checks = _mutated(schema.table2_cell(Attack.CW_HC, Objective.RCE), n_counted=10)
    assert _status(checks, "counted pairs") == [PASS, FAIL]
    assert f"≥ {MIN_COUNTED}" in checks[-1].name and "10 of 100" in checks[-1].detail


def _demo_copy(tmp_path) -> Path:
    run_dir = tmp_path / "demo"
    shutil.copytree(DEMO / "cells", run_dir / "cells")
    shutil.copy(DEMO / "run.json", run_dir / "run.json")
    return run_dir


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def test_report_opens_with_the_sanity_checks_and_lists_the_protocol(tmp_path):
    run_dir = _demo_copy(tmp_path)
    # One more check is made to fail (counted pairs), beside the demo's own failures: the report explains each.
    cell = run_dir / "cells" / f"{schema.table2_cell(Attack.CW_HC, Objective.RCE)}.json"
    record = json.loads(cell.read_text())
    record["result"]["n_counted"] = 10
    cell.write_text(json.dumps(record))
    paths = render_report(run_dir)
    md = paths["markdown"].read_text()
    checks = sanity_checks({p.stem: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")})
    # Right after the header, before everything else.
    assert md.index("Sanity checks") < md.index("How to read") < md.index("## Protocol") < md.index("## Table 1")
    section = _section(md, "## Sanity checks")
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| check", "| ---"))]
    assert len(rows) == len(checks)
    for check, row in zip(checks, rows):
        assert row.startswith(f"| {check.name} | ")
        assert (f"| **{FAIL}** |" in row) == (check.status == FAIL)
    # The failing check's meaning is spelled out.
    failed = [c for c in checks if c.status == FAIL]
    assert f"counted pairs ≥ {MIN_COUNTED} in every Table 2 cell (RCE)" in [c.name for c in failed] and f"{len(failed)} of {len(checks)} checks FAIL" in section
    assert all(c.meaning in section for c in failed)
    assert json.loads(paths["checks"].read_text()) == [c.to_json() for c in checks]
    protocol = _section(md, "## Protocol")
    for source in ("attacks/jsma.py", "test_adv.py", "carliniL2_specific.py", "median_for_attack.m",
                   "auc_of_roc_RCE.m", "AUC.m", "cifar_input.py", "attacks/tgsm.py"):
        assert source in protocol
    # This run's values, not the paper's: the quick preset's reduced C&W budget.
    assert "3 × 500 from c₀ = 10, Adam lr 0.1 (this preset's reduced budget" in protocol
    assert "Distortion matching" in protocol and "0.04" in protocol
    # JSMA changes at most max_iters pixels (single-feature map by default), not 2 x max_iters.
    table = _section(md, "## Appendix Table 1")
    assert "| JSMA | CE | ≤ 100 pixels |" in table


def test_report_reads_the_official_keys_when_present(tmp_path):
    run_dir = _demo_copy(tmp_path)
    t3 = run_dir / "cells" / f"{schema.table3_cell(0, Objective.CE)}.json"
    record = json.loads(t3.read_text())
    record["result"].update(success_percent=93.75, success_full_bank_percent=18.75, mean_distortion_official=12.345,
                            ratio_f2_positive_attack_bank_percent=6.25)
    t3.write_text(json.dumps(record))
    t2 = run_dir / "cells" / f"{schema.table2_cell(Attack.FGSM, Objective.CE)}.json"
    record = json.loads(t2.read_text())
    record["result"][schema.AUC_OFFICIAL_TIES] = {"confidence": 0.5, "non-me": 0.4, "kd": 0.3}
    confidence = record["result"][schema.AUC]["confidence"]
    t2.write_text(json.dumps(record))
    md = render_report(run_dir)["markdown"].read_text()
    t3_row = next(line for line in _section(md, "## Table 3").splitlines() if line.startswith("| κ = 0 | CE |"))
    cells = [c.strip() for c in t3_row.strip("|").split("|")]
    assert cells[3] == "6 (1)" and cells[5] == "12.35 (17.12)" and cells[7:9] == ["94", "19"]
    ties = _section(md, "### AUC tie rule")
    assert f"| FGSM | CE | {100 * confidence:.1f} / 50.0 | " in ties
    # Table 2's distortion column is the all-images mean, the counted mean beside it.
    t2_row = next(line for line in _section(md, "## Table 2").splitlines() if line.startswith("| FGSM | CE |"))
    cells = [c.strip() for c in t2_row.strip("|").split("|")]
    assert cells[4] == f"{record['result']['distortion_all']:.2f} (26.92)"
    assert cells[5] == f"{record['result']['distortion']:.2f}"
    # A tiny check result that the new success key now satisfies.
    assert "| C&W-wb (κ = 0) success ≥ 90 % on CE | pass |" in md


def test_histogram_range_ignores_outliers():
    values = np.concatenate([np.linspace(-2.0, 0.0, 1000), [-80.0, -np.inf]])
    lo, hi = _robust_range(values)
    assert -2.3 < lo < -1.9 and hi == 0.0
    assert _robust_range(np.array([1.0, 1.0])) == (1.0, 1.0)
