"""Sanity checks of a reproduction run: can its evaluation be trusted at all?

    sanity_checks(records) -> tuple[Check, ...]      to_json(checks) -> str

After Carlini et al. 2019, *On Evaluating Adversarial Robustness* (section 5: iterative attacks
must beat single-step ones, accuracy must fall as the budget grows, unbounded attacks must reach
~100 %) and AutoAttack's `checks.py` (the worst-case cells carry their own gradient-masking checks,
`evaluation.worst_case`, summarised here) (no non-finite numbers, enough samples). Every check reads
only the cell records (`CellStore.records()`: cell name -> record with a "result"), is computed
for each model where it applies, and comes back as data: a missing cell gives "n/a", a failing
check stops nothing -- the report prints it at the top.
"""

import json
import math
from dataclasses import asdict, dataclass

from ..names import Attack, Objective
from . import schema
from .schema import FIG3_ATTACKS, OBJECTIVES, TABLE2_ATTACKS

PASS, FAIL, NA = "pass", "FAIL", "n/a"
STATUSES = (PASS, FAIL, NA)

# Fewest counted pairs (clean right, adversarial wrong) behind a Table 2 AUC: below this the 95 %
# interval of an AUC spans tens of points and CE/RCE differences are noise.
MIN_COUNTED = 30
# An unbounded attack (C&W, kappa 0) should fool (almost) every input.
MIN_UNBOUNDED_SUCCESS = 0.95
# C&W-wb (kappa 0) against the CE model: the paper's Table 3 shows it succeeds (ratio f2 > 0: 1 %).
MIN_CWWB_CE_SUCCESS_PERCENT = 90.0
# Float slack on top of the one-image tolerance (rates are stored as float32 means).
_SLACK = 1e-6


@dataclass(frozen=True)
class Check:
    """One sanity check: `status` is "pass", "FAIL" or "n/a"; `meaning` says what a failure implies."""

    name: str
    status: str
    detail: str
    meaning: str

    def to_json(self) -> dict:
        return asdict(self)


def to_json(checks) -> str:
    """The checks as a JSON list of {name, status, detail, meaning}."""
    return json.dumps([c.to_json() for c in checks], indent=2, sort_keys=True)


def _result(records, name):
    record = records.get(name)
    return None if record is None else record.get("result")


def _pct(value) -> str:
    return f"{100 * value:.1f} %"


def _verdict(failures) -> str:
    return FAIL if failures else PASS


# ------------------------------------------------------------------------------------- checks
ITERATIVE_MEANING = ("BIM is FGSM iterated inside the same eps-ball; weaker BIM means the iterative attack is "
                     "broken or under-budgeted (step size, iterations, gradient masking), so every iterative-attack "
                     "number of this run understates the attack.")


def _iterative_vs_single_step_fig3(records, obj) -> Check:
    name = f"BIM ≥ FGSM at every ε of Figure 3 ({obj.display})"
    bim, fgsm = (_result(records, schema.fig3_cell(a, obj)) for a in (Attack.BIM, Attack.FGSM))
    if bim is None or fgsm is None:
        return Check(name, NA, "Figure 3 BIM or FGSM cell missing", ITERATIVE_MEANING)
    n = min(bim["n"], fgsm["n"])
    tol = 1 / n
    fgsm_at = dict(zip(fgsm["eps"], fgsm["attack_success_rate"]))
    shared = [(e, s, fgsm_at[e]) for e, s in zip(bim["eps"], bim["attack_success_rate"]) if e in fgsm_at]
    if not shared:
        return Check(name, NA, "no ε shared by the BIM and FGSM grids", ITERATIVE_MEANING)
    bad = [f"ε = {e:g}: BIM {_pct(b)} < FGSM {_pct(f)}" for e, b, f in shared if b < f - tol - _SLACK]
    detail = "; ".join(bad) if bad else f"{len(shared)} ε compared"
    return Check(name, _verdict(bad), f"{detail} (tolerance one image, 1/{n})", ITERATIVE_MEANING)


def _iterative_vs_single_step_table2(records, obj) -> Check:
    name = f"BIM ≥ FGSM in Table 2 ({obj.display})"
    bim, fgsm = (_result(records, schema.table2_cell(a, obj)) for a in (Attack.BIM, Attack.FGSM))
    if bim is None or fgsm is None:
        return Check(name, NA, "Table 2 BIM or FGSM cell missing", ITERATIVE_MEANING)
    if bim.get("eps") is None or bim.get("eps") != fgsm.get("eps"):
        return Check(name, NA, f"different ε (BIM {bim.get('eps')}, FGSM {fgsm.get('eps')}): not comparable",
                     ITERATIVE_MEANING)
    n = min(bim["n"], fgsm["n"])
    b, f = bim["attack_success_rate"], fgsm["attack_success_rate"]
    ok = b >= f - 1 / n - _SLACK
    return Check(name, PASS if ok else FAIL,
                 f"ε = {bim['eps']:g}: BIM {_pct(b)} vs FGSM {_pct(f)} (tolerance one image, 1/{n})",
                 ITERATIVE_MEANING)


MONOTONE_MEANING = ("A larger eps-ball contains every smaller one, so accuracy under attack should not rise with "
                    "eps; a significant rise means the attack does not find what it found at a smaller budget (a "
                    "non-converging optimisation, randomness, or gradient masking).")
# One-sided level of the paired sign test behind the monotonicity check. The attacks do not search
# nested sets (JSMA's theta is a step size: 100 steps of 0.04 never land on a point of 0.03's path;
# FGSM and BIM scale their steps with eps), so on a few images their curves wobble by chance:
# CIFAR-10 quick RCE under JSMA went 45.8 % -> 66.7 % from theta 0.03 to 0.04 on 24 images (7 images
# wrong -> right, 2 right -> wrong, p = 0.09) but 55.0 % -> 52.0 % on 200 images.
MONOTONE_ALPHA = 0.05


def sign_test_p(up: int, down: int) -> float:
    """P(X >= up) for X ~ Binomial(up + down, 1/2): the exact one-sided sign (McNemar) test that more
    inputs turned right than wrong by chance."""
    m = up + down
    return sum(math.comb(m, i) for i in range(up, m + 1)) / 2 ** m


def _rise(r, i, j):
    """Why accuracy at grid point j (larger eps) exceeding point i is a failure, or None if it is not.

    A rise counts when it exceeds one image and, where the cell stores per-example correctness
    ("correct"), when the paired sign test rejects chance at MONOTONE_ALPHA (cells without it: the
    one-image rule alone).
    """
    a0, a1 = r["accuracy"][i], r["accuracy"][j]
    if a1 <= a0 + 1 / r["n"] + _SLACK:
        return None
    correct = r.get("correct")
    if correct is None:
        return ""
    up = sum(1 for c0, c1 in zip(correct[i], correct[j]) if c1 and not c0)
    down = sum(1 for c0, c1 in zip(correct[i], correct[j]) if c0 and not c1)
    p = sign_test_p(up, down)
    return f" ({up} wrong → right, {down} right → wrong, sign test p = {p:.3g})" if p < MONOTONE_ALPHA else None


def _present(records, cell_name, attacks, obj) -> list:
    """[(attack, result)] of the cells `cell_name(attack, obj)` this run has."""
    results = [(a, _result(records, cell_name(a, obj))) for a in attacks]
    return [(a, r) for a, r in results if r is not None]


def _accuracy_monotone(records, obj) -> Check:
    name = f"accuracy non-increasing along each Figure 3 grid ({obj.display})"
    cells = _present(records, schema.fig3_cell, FIG3_ATTACKS, obj)
    if not cells:
        return Check(name, NA, "no Figure 3 cell", MONOTONE_MEANING)
    bad, sizes = [], set()
    for attack, r in cells:
        sizes.add(r["n"])
        order = sorted(range(len(r["eps"])), key=lambda k: r["eps"][k])
        for i, j in zip(order, order[1:]):
            why = _rise(r, i, j)
            if why is not None:
                bad.append(f"{attack.display}: {_pct(r['accuracy'][i])} at {r['eps'][i]:g} → "
                           f"{_pct(r['accuracy'][j])} at {r['eps'][j]:g}{why}")
    detail = "; ".join(bad) if bad else f"{len(cells)} grids ({', '.join(a.display for a, _ in cells)})"
    tol_text = ", ".join(f"1/{n}" for n in sorted(sizes))
    unpaired = [a.display for a, r in cells if r.get("correct") is None]
    rule = f"a rise fails when it exceeds one image, {tol_text}, and a paired sign test gives p < {MONOTONE_ALPHA:g}"
    if unpaired:
        rule += f"; one-image rule alone for {', '.join(unpaired)} (no per-example verdicts stored)"
    return Check(name, _verdict(bad), f"{detail} ({rule})", MONOTONE_MEANING)


UNBOUNDED_MEANING = ("C&W (κ = 0) has no distortion bound, so it must fool essentially every input; a lower "
                     "success rate means its budget (binary-search steps, iterations, learning rate, initial c) is "
                     "too small, and its Table 2 row is computed on the easy inputs only.")


def _unbounded_attack(records, obj) -> Check:
    name = f"unbounded C&W (κ = 0) success ≥ {_pct(MIN_UNBOUNDED_SUCCESS)} ({obj.display})"
    r = _result(records, schema.table2_cell(Attack.CW, obj))
    if r is None or r.get("attack_success_rate") is None:
        return Check(name, NA, "Table 2 C&W cell missing", UNBOUNDED_MEANING)
    rate = r["attack_success_rate"]
    ok = rate >= MIN_UNBOUNDED_SUCCESS - _SLACK
    return Check(name, PASS if ok else FAIL, f"success {_pct(rate)} on n = {r['n']}", UNBOUNDED_MEANING)


CWWB_MEANING = ("The paper's Table 3 has C&W-wb fooling the CE model's classifier and K-density detector almost "
                "always (ratio f2 > 0: 1 %). Below 90 % here the white-box attack is under-budgeted, so Table 3's "
                "ratios say more about the attack than about the detector, for both models.")


def _cwwb_works(records) -> Check:
    obj = Objective.CE
    name = f"C&W-wb (κ = 0) success ≥ {MIN_CWWB_CE_SUCCESS_PERCENT:g} % on {obj.display}"
    r = _result(records, schema.table3_cell(0, obj))
    if r is None or r.get("success_percent") is None:
        return Check(name, NA, "Table 3 κ = 0 CE cell missing (or no clean-correct input)", CWWB_MEANING)
    s = r["success_percent"]
    ok = s >= MIN_CWWB_CE_SUCCESS_PERCENT - _SLACK
    # Cells without the full-bank key predate the official criterion: theirs is the full-bank one.
    criterion = "the attack bank" if "success_full_bank_percent" in r else "the detector's full bank"
    return Check(name, PASS if ok else FAIL,
                 f"success {s:.1f} % (classifier fooled and f2 ≤ 0 on {criterion}, over the "
                 f"{r.get('n_clean_correct', '?')} clean-correct inputs)", CWWB_MEANING)


FINITE_MEANING = ("A NaN, an infinity, an AUC outside [0, 1] or a missing number on counted pairs means a metric "
                  "was computed on broken scores (overflowing K-density, empty sets, a bug); the affected "
                  "numbers cannot be read.")

# Per cell kind: the keys that must be a number whenever the cell counted at least one pair.
_REQUIRED = {
    schema.TABLE2: ("distortion", schema.AUC, schema.DETECTION_RATE),
    schema.TABLE3: ("ratio_f2_positive_percent", "mean_distortion", "kd_auc"),
    schema.TABLE4: ("auc",),
}
_FINITE_KINDS = (schema.TABLE2, schema.TABLE3, schema.TABLE4, schema.FIG3, schema.WORST_CASE)
# Raw per-example blocks, images and configurations are not metrics.
_SKIP = {schema.PER_EXAMPLE, schema.FIGURE4, schema.HIST, "settings", "thresholds", "kd_threshold", "budget",
         "tramer", "checks"}
_AUC_KEYS = {schema.AUC, schema.AUC_OFFICIAL_TIES, "kd_auc"}


def _numbers(value, path):
    """(path, number-or-None) for every scalar in a nested dict/list."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in _SKIP:
                yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        yield path, value


def _finite(records) -> Check:
    name = "all metrics finite, AUCs in [0, 1], numbers present where pairs were counted"
    cells = sorted(n for n in records if schema.kind(n) in _FINITE_KINDS)
    if not cells:
        return Check(name, NA, "no Table 2-4, Figure 3 or worst-case cell", FINITE_MEANING)
    bad, checked = [], 0
    for cell in cells:
        r = _result(records, cell) or {}
        counted = r.get("n_counted")
        for key in _REQUIRED.get(schema.kind(cell), ()):
            if key not in r:
                continue
            for path, v in _numbers(r[key], key):
                if v is None and counted:
                    bad.append(f"{cell}: {path} missing with {counted} counted pairs")
        for key, value in r.items():
            if key in _SKIP:
                continue
            for path, v in _numbers(value, key):
                if v is None:
                    continue
                checked += 1
                if not math.isfinite(v):
                    bad.append(f"{cell}: {path} = {v}")
                elif key in _AUC_KEYS and not 0 <= v <= 1:
                    bad.append(f"{cell}: {path} = {v:g} outside [0, 1]")
    detail = "; ".join(bad[:8]) + (f"; … ({len(bad)} in all)" if len(bad) > 8 else "") if bad else \
        f"{checked} numbers in {len(cells)} cells"
    return Check(name, _verdict(bad), detail, FINITE_MEANING)


COUNTED_MEANING = (f"Fewer than {MIN_COUNTED} counted pairs (clean right, adversarial wrong) leave an AUC with a "
                   "95 % interval tens of points wide: that Table 2 row cannot separate CE from RCE. Attack more "
                   "images or use a stronger attack budget.")


def _counted_pairs(records, obj) -> Check:
    name = f"counted pairs ≥ {MIN_COUNTED} in every Table 2 cell ({obj.display})"
    cells = _present(records, schema.table2_cell, TABLE2_ATTACKS, obj)
    if not cells:
        return Check(name, NA, "no Table 2 cell", COUNTED_MEANING)
    low = [f"{a.display}: {r['n_counted']} of {r['n']}" for a, r in cells if r["n_counted"] < MIN_COUNTED]
    detail = "; ".join(low) if low else f"{len(cells)} cells, fewest {min(r['n_counted'] for _, r in cells)}"
    return Check(name, _verdict(low), detail, COUNTED_MEANING)


WORST_CASE_MEANING = ("A gradient-masking check of the worst-case evaluation failed (zero detector gradients, robust "
                      "accuracy rising with eps, steps or restarts, a transfer attack beating the white-box one, or "
                      "an attack failing at a radius covering the whole box): its robust accuracies overstate the "
                      "detector's robustness until a stronger or different attack is run.")


def _worst_case(records, obj) -> Check:
    name = f"worst-case evaluation passes its gradient-masking checks ({obj.display})"
    r = _result(records, schema.worst_case_cell(obj))
    if r is None:
        return Check(name, NA, "worst-case cell missing", WORST_CASE_MEANING)
    bad, counted = [], 0
    for metric, entry in r.get("detectors", {}).items():
        for check, c in entry.get("checks", {}).items():
            counted += c.get("status") != NA
            if c.get("status") == FAIL:
                bad.append(f"{metric} {check}: {c.get('detail')}")
    detail = "; ".join(bad[:6]) + (f"; … ({len(bad)} in all)" if len(bad) > 6 else "") if bad else \
        f"{counted} checks over {len(r.get('detectors', {}))} detectors"
    return Check(name, _verdict(bad), detail, WORST_CASE_MEANING)


def sanity_checks(records: dict) -> tuple:
    """Every sanity check of a run, in report order, from its cell records (name -> record)."""
    checks = []
    for obj in OBJECTIVES:
        checks.append(_iterative_vs_single_step_fig3(records, obj))
    for obj in OBJECTIVES:
        checks.append(_iterative_vs_single_step_table2(records, obj))
    for obj in OBJECTIVES:
        checks.append(_accuracy_monotone(records, obj))
    for obj in OBJECTIVES:
        checks.append(_unbounded_attack(records, obj))
    checks.append(_cwwb_works(records))
    for obj in OBJECTIVES:
        checks.append(_worst_case(records, obj))
    checks.append(_finite(records))
    for obj in OBJECTIVES:
        checks.append(_counted_pairs(records, obj))
    return tuple(checks)
