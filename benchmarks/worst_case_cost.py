"""Cost per input of the worst-case adaptive evaluation (issue 16) on the models of a reproduction run.

    .venv/bin/python benchmarks/worst_case_cost.py RUN [--budget quick|paper] [--n 24] [--threads 1]
                                                      [--objectives ce rce] [--metrics ...]

RUN is a `rcedetect reproduce` / `rcedetect demo` folder with trained models (its cells are not
touched: the detectors are rebuilt from its cached K-density banks and calibration outputs, no cell
is written). `--budget quick` runs the quick preset's worst-case cell budget on its `worst_case_n`
images (what one `worstcase.<obj>` cell of the demo costs); `--budget paper` runs the paper budget
on `--n` images, per detector, and prints seconds per image (the full cell: times 1 000 images).
Wall and CPU seconds of this process; CPU time survives a machine shared with other jobs.
"""

import argparse
import platform
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run", help="reproduction folder with trained models (runs/demo-mnist-quick)")
    parser.add_argument("--budget", choices=("quick", "paper"), default="quick")
    parser.add_argument("--n", type=int, default=None, help="images (default: the quick preset's worst_case_n)")
    parser.add_argument("--objectives", nargs="+", default=["ce", "rce"])
    parser.add_argument("--metrics", nargs="+", default=None, help="detectors (default: the preset's)")
    parser.add_argument("--restarts", type=int, default=None, help="override the budget's restarts (a measured fraction)")
    parser.add_argument("--norms", nargs="+", default=None, help="keep only these norms' grids (a measured fraction)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    import torch

    from rcedetect.evaluation.worst_case import WorstCaseBudget, summarize_worst_case
    from rcedetect.reproduce.cells import WorstCaseCell
    from rcedetect.reproduce.context import RunContext
    from rcedetect.reproduce.presets import get_preset
    from rcedetect.reproduce.store import CellStore

    torch.set_num_threads(args.threads)
    quick = get_preset("mnist", "quick")
    preset = get_preset("mnist", args.budget)
    # The quick run's models, data and cache; the budget of the chosen preset.
    ctx = RunContext(quick, args.run, device="cpu", data_dir=args.data_dir, store=CellStore(args.run, device="cpu"))
    settings = dict(preset.worst_case)
    if args.restarts is not None:
        settings["restarts"] = args.restarts
    if args.norms:
        settings["eps"] = {k: v for k, v in settings["eps"].items() if k in args.norms}
    budget = WorstCaseBudget(**settings)
    import rcedetect.evaluation.worst_case as wc

    parts = {}

    def timed_part(fn, key):
        def run(*a, **k):
            c0 = time.process_time()
            out = fn(*a, **k)
            name = key(a, k)
            parts[name] = parts.get(name, 0.0) + time.process_time() - c0
            return out
        return run

    wc.cw_l2_detector = timed_part(wc.cw_l2_detector, lambda a, k: "cw-l2")
    wc.detector_aware_pgd = timed_part(wc.detector_aware_pgd, lambda a, k: (
        "undefended" if type(a[3]).__name__ == "AcceptAll" else f"pgd-{k['method']}") + f"-{k['norm']}")
    n = args.n or quick.worst_case_n
    metrics = args.metrics or list(quick.worst_case_metrics)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"budget {args.budget}: {budget.to_dict()}")
    x, y = ctx.images(n)
    for objective in args.objectives:
        detectors = WorstCaseCell(objective).detectors(ctx)
        model = ctx.model(0, objective)
        total_w = total_c = 0.0
        for metric in metrics:
            w0, c0 = time.perf_counter(), time.process_time()
            t = wc.worst_case_examples(model, {metric: detectors[metric]}, x, y, budget=budget, seed=quick.seed)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            total_w, total_c = total_w + w, total_c + c
            print("   cpu by part: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(parts.items())))
            parts.clear()
            s = summarize_worst_case(t, budget=budget, thresholds={metric: detectors[metric].threshold_})
            ra = s["detectors"][metric]["robust_accuracy_with_rejection"]
            print(f"{objective:<4} {metric:<12} n={n}: wall {w:7.1f} s  cpu {c:7.1f} s  ({w / n:.3f} s/image)  "
                  + "  ".join(f"{k} {' '.join(f'{v:.2f}' for v in vals)}" for k, vals in ra.items()))
        print(f"{objective:<4} all detectors: wall {total_w:.1f} s, cpu {total_c:.1f} s, {total_w / n:.3f} s/image "
              f"(includes the undefended baseline once per detector here; the cell runs it once)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
