"""What a C&W abort rule costs a whole reproduction: a finished run folder re-run under another rule.

    .venv/bin/python benchmarks/rule_cost.py RUN --rule example [--dataset mnist --preset quick]

Copies RUN (made under the default rule, `cw.DEFAULT_ABORT_RULE`) to RUN-<rule>, then runs
`rcedetect reproduce` there with every C&W-family setting of the preset naming `--rule`. Only the
cells whose config changes are recomputed (the C&W family and the cells built on its attacks:
baselines, Table 4, worst case), on the same trained models, right after the original run: a
direct A/B of the rule on one machine, which a comparison against another day's timing is not
(this VM's speed has varied 2-5x between days). Prints per cell the wall seconds of both folders
and their ratio, and the totals.

Run it on a quiet machine right after RUN was made: the cells' `wall_seconds` of both folders are
compared as they stand.

The presets copy `cw.DEFAULT_ABORT_RULE` into their settings when they are imported, so the rule is
set on that module before anything imports the presets; nothing else changes.
"""

import argparse
import glob
import json
import os
import shutil
import sys

from rcedetect.names import AbortRule


def cell_seconds(run: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(run, "cells", "*.json"))):
        with open(path) as f:
            cell = json.load(f)
        out[os.path.basename(path)[:-len(".json")]] = (cell["provenance"]["wall_seconds"],
                                                        cell["provenance"]["finished_utc"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a finished `rcedetect reproduce` folder made under the default rule")
    parser.add_argument("--rule", required=True, choices=AbortRule.choices(), help="the abort rule to re-run the C&W family with")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()

    import rcedetect.attacks.cw as cw
    rule = AbortRule(args.rule)
    if "rcedetect.reproduce.presets" in sys.modules:
        raise SystemExit("rule_cost.py: the presets were imported before the rule was set")
    default, cw.DEFAULT_ABORT_RULE = cw.DEFAULT_ABORT_RULE, rule
    from rcedetect.cli import main as cli_main

    target = f"{args.run.rstrip('/')}-{rule.value}"
    if os.path.exists(target):
        raise SystemExit(f"rule_cost.py: {target} exists; remove it or pick another run folder")
    shutil.copytree(args.run, target)
    status = cli_main(["reproduce", "--dataset", args.dataset, "--preset", args.preset, "--out", target,
                       "--no-report", "--no-progress"])
    if status:
        return status

    base, other = cell_seconds(args.run), cell_seconds(target)
    recomputed = [name for name in base if other[name][1] != base[name][1]]
    print(f"{'cell':28s} {default.value:>10s} {rule.value:>10s}  ratio")
    total_base = total_other = 0.0
    for name in recomputed:
        a, b = base[name][0], other[name][0]
        total_base, total_other = total_base + a, total_other + b
        print(f"{name:28s} {a:10.1f} {b:10.1f}  {a / b if b else float('nan'):5.2f}")
    whole_base = sum(s for s, _ in base.values())
    whole_other = whole_base - total_base + total_other
    print(f"recomputed cells: {total_base:.0f} s under {default.value}, {total_other:.0f} s under "
          f"{rule.value} ({len(recomputed)} cells)")
    print(f"all cells: {whole_base:.0f} s under {default.value}, {whole_other:.0f} s with {rule.value}'s "
          f"recomputed cells: ratio {whole_base / whole_other:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
