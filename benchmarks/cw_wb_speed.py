"""Seconds per example of C&W-wb on this machine, next to the paper's 700-1300 s on a P100
(appendix Table 1, 9 binary steps x 10 000 iterations).

    .venv/bin/python benchmarks/cw_wb_speed.py CHECKPOINT [--n-small 10 --small-iters 20
        --n-full 2 --full-cap 240 --threads 0]

0. The cost of one attack iteration (forward + backward of features and logits) at batch 1 and
   `--n-small`: the unit every C&W-wb time is made of; and one iteration of phase 2's loop (the
   K-density term included) against one of plain C&W-L2, both full-batch (`per_iteration_ratio`).
1. Scaled-down budget: both phases 9 binary steps x `--small-iters` Adam iterations on `--n-small`
   images in one batch; also plain C&W-L2 (phase 1 alone) with the same budget in the same process,
   and the ratio.
2. Full budget (9 x 10 000 per phase) on `--n-full` images in one batch, stopped after `--full-cap`
   seconds. If it finishes, the time is measured; if not, we print the elapsed time as a lower bound
   and an upper bound = (measured seconds per iteration) x (the iterations left if no example ever
   aborts early), both clearly labelled.
`--preset quick|paper [--preset-n 16 --kappa 0]` instead measures C&W-wb exactly as the reproduction
runs it (the preset's `cwwb_settings_for(kappa)`, `run_cw_wb`, random targets, one batch of
`--preset-n` images): seconds per example, iterations executed per example against the budget's
maximum, success. With `--full-cap` it stops there and prints the lower bound and the no-abort upper
bound as above.
The K-density detector is the one `rcedetect detect` fits beside the checkpoint (1000 per class).
"""

import argparse
import json
import os
import sys
import time

import torch

from rcedetect.attacks import cw_l2, random_targets
from rcedetect.evaluation.threat_models import run_cw_wb
from rcedetect.names import AbortRule


class _Deadline(Exception):
    pass


class CountingModel(torch.nn.Module):
    """Counts forward passes (= Adam iterations of the batch) and their rows (one row = one example's
    iteration), and stops the run after `cap` seconds."""

    def __init__(self, inner, cap=None):
        super().__init__()
        self.inner, self.cap, self.calls, self.rows, self.started = inner, cap, 0, 0, time.perf_counter()
        self.num_classes = inner.num_classes

    def _tick(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        if self.cap is not None and time.perf_counter() - self.started > self.cap:
            raise _Deadline

    def forward(self, x):
        self._tick(x)
        return self.inner(x)

    def forward_features(self, x):
        self._tick(x)
        return self.inner.forward_features(x)


def per_iteration_ratio(model, kd, x, target, iters: int, repeats: int = 3) -> dict:
    """Seconds per batch iteration of phase 2's loop (C&W-L2 + the K-density term, with its success
    callback) against the plain C&W-L2 loop: both `cw_l2_search`, 1 binary step x `iters`, no early
    abort, so every iteration runs the full batch and the two count the same rows. The K-density term
    once through the stacked path (now) and once through the per-class loop (before; forced by
    `STACKED_ELEMENTS = 0`). Best of `repeats`, interleaved."""
    from rcedetect.attacks.cw import cw_l2_search
    from rcedetect.attacks.cw_wb import attack_bank, attack_eta, f2_loss
    from rcedetect.detectors import kernel_density

    sub_kd, member = attack_bank(kd, 100, seed=0)
    eta = attack_eta(kd, sub_kd, member).to(x.dtype)

    def extra_loss(x_adv, logits, features, idx):
        return f2_loss(sub_kd, features, target[idx], eta)

    def extra_success(x_adv, logits, features, idx):
        return f2_loss(sub_kd, features, target[idx], eta) <= 0

    settings = dict(targeted=True, binary_search_steps=1, max_iters=iters, lr=0.01, initial_const=1.0, abort_early=False)
    runs = {"plain": {}, "kd_stacked": dict(extra_loss=extra_loss, extra_success=extra_success),
            "kd_per_class": dict(extra_loss=extra_loss, extra_success=extra_success)}
    best = {name: float("inf") for name in runs}
    limit = kernel_density.STACKED_ELEMENTS
    for _ in range(repeats):
        for name, hooks in runs.items():
            kernel_density.STACKED_ELEMENTS = 0 if name == "kd_per_class" else limit
            t0 = time.perf_counter()
            cw_l2_search(model, x, target, **settings, **hooks)
            best[name] = min(best[name], (time.perf_counter() - t0) / iters)
    kernel_density.STACKED_ELEMENTS = limit
    return {"batch": x.shape[0], "iterations": iters, "seconds_per_batch_iteration": best,
            "ratio_kd_stacked_over_plain": best["kd_stacked"] / best["plain"],
            "ratio_kd_per_class_over_plain": best["kd_per_class"] / best["plain"]}


def preset_budget(args, loaded, model, kd, data, report) -> int:
    """C&W-wb at a preset's budget, as the reproduction runs it (module docstring)."""
    from rcedetect.reproduce.presets import get_preset

    settings = get_preset(loaded.config.dataset, args.preset).cwwb_settings_for(args.kappa)
    if args.abort_rule:
        settings = {**settings, "abort_rule": args.abort_rule}
    lo, n = args.start, args.preset_n
    x, y = data.float_images(slice(lo, lo + n)), data.labels[lo:lo + n]
    counter = CountingModel(model, cap=args.full_cap if args.preset == "paper" else None)
    phase1 = settings.get("phase1_binary_search_steps", 1) * settings.get("phase1_max_iters", 0)
    max_rows = phase1 + settings["binary_search_steps"] * settings["max_iters"]
    t0 = time.perf_counter()
    try:
        res = run_cw_wb(counter, kd, x, y, kappa=args.kappa, seed=0, start=lo, **settings)
        finished = True
    except _Deadline:
        finished = False
    elapsed = time.perf_counter() - t0
    entry = {"preset": args.preset, "kappa": args.kappa, "settings": settings, "n": n, "finished": finished,
             "seconds": elapsed, "rows_per_example": counter.rows / n, "max_rows_per_example": max_rows}
    if finished:
        l2, success = (res.x_adv.cpu() - x).flatten(1).norm(dim=1), res.success.cpu()
        entry.update(seconds_per_example=elapsed / n, success_percent=100 * float(success.float().mean()),
                     fooled_percent=100 * float(res.fooled.float().mean()),
                     median_l2_success=float(l2[success].median()) if success.any() else None,
                     l2_per_example=[float(v) if ok else None for v, ok in zip(l2, success)])
    else:
        entry.update(seconds_per_example_lower_bound=elapsed / n,
                     seconds_per_example_upper_bound_extrapolated=elapsed / max(counter.rows, 1) * max_rows)
    print(json.dumps({**report, **entry}), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n-small", type=int, default=10)
    parser.add_argument("--small-iters", type=int, default=20)
    parser.add_argument("--n-full", type=int, default=2)
    parser.add_argument("--full-cap", type=float, default=240.0, help="seconds before the full run is stopped")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--start", type=int, default=5000)
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $RCEDETECT_DATA_DIR)")
    parser.add_argument("--ratio-iters", type=int, default=30, help="iterations of the per-iteration comparison")
    parser.add_argument("--iteration-only", action="store_true", help="stop after the per-iteration comparison")
    parser.add_argument("--preset", choices=["quick", "paper"], help="measure at this preset's C&W-wb budget only")
    parser.add_argument("--preset-n", type=int, default=16, help="images (one batch) for --preset")
    parser.add_argument("--kappa", type=float, default=0.0, help="C&W-wb margin for --preset")
    parser.add_argument("--abort-rule", choices=AbortRule.choices(),
                        help="with --preset: override the preset's C&W abort rule")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from rcedetect.checkpoints import load_checkpoint
    from rcedetect.data import load_dataset
    from rcedetect.detectors.session import DetectorSettings, fit_or_load_detector
    from rcedetect.names import Metric

    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model
    kd, fit = fit_or_load_detector(loaded, Metric.KD, DetectorSettings(data_dir=args.data_dir), device="cpu")
    for note in fit.notes:
        print(f"note: {note}", file=sys.stderr)
    data = load_dataset(loaded.config.dataset, "test", args.data_dir)
    n = max(args.n_small, args.n_full)
    x, y = data.float_images(slice(args.start, args.start + n)), data.labels[args.start:args.start + n]
    target = random_targets(y, model.num_classes, 0)
    report = {"checkpoint": str(loaded.directory), "objective": loaded.config.objective, "depth": loaded.config.depth,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__}

    def iteration_seconds(batch, repeats=5):
        xb = x[:batch].clone().requires_grad_(True)
        with torch.enable_grad():
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = model.forward_features(xb)
                torch.autograd.grad(out.logits.sum() + out.features.sum(), xb)
        return (time.perf_counter() - t0) / repeats

    if args.preset:
        return preset_budget(args, loaded, model, kd, data, report)
    report["iteration_seconds"] = {str(b): iteration_seconds(b) for b in sorted({1, args.n_small})}
    print(json.dumps(report, indent=2), flush=True)
    report["per_iteration"] = per_iteration_ratio(model, kd, x[:args.n_small], target[:args.n_small], args.ratio_iters)
    print(json.dumps(report["per_iteration"], indent=2), flush=True)
    if args.iteration_only:
        return 0

    small = {"binary_search_steps": 9, "max_iters": args.small_iters, "initial_const": 1.0}
    xs, ys, ts = x[:args.n_small], y[:args.n_small], target[:args.n_small]
    counter = CountingModel(model)
    t0 = time.perf_counter()
    res = run_cw_wb(counter, kd, xs, ys, target=ts, **small)
    t_wb = time.perf_counter() - t0
    t0 = time.perf_counter()
    cw_l2(model, xs, ys, target=ts, **small)
    t_cw = time.perf_counter() - t0
    report["scaled_down"] = {
        "budget": f"9 x {args.small_iters} per phase", "n": args.n_small, "seconds": t_wb,
        "seconds_per_example": t_wb / args.n_small, "forward_passes": counter.calls,
        "seconds_per_batch_iteration": t_wb / counter.calls,
        "success_percent": 100 * float(res.success.float().mean()),
        "fooled_percent": 100 * float(res.fooled.float().mean()),
        "plain_cw_seconds_per_example": t_cw / args.n_small, "ratio_cw_wb_over_cw": t_wb / t_cw,
    }
    print(json.dumps(report["scaled_down"], indent=2), flush=True)

    full = {"binary_search_steps": 9, "max_iters": 10000, "initial_const": 1.0}
    xf, yf, tf = x[:args.n_full], y[:args.n_full], target[:args.n_full]
    counter = CountingModel(model, cap=args.full_cap)
    t0 = time.perf_counter()
    try:
        res = run_cw_wb(counter, kd, xf, yf, target=tf, **full)
        finished = True
    except _Deadline:
        finished = False
    elapsed = time.perf_counter() - t0
    per_iter = elapsed / max(counter.calls, 1)
    max_iters = 2 * 9 * 10000  # both phases, no early abort
    entry = {"budget": "9 x 10000 per phase (paper, appendix B.2)", "n": args.n_full, "finished": finished,
             "seconds": elapsed, "forward_passes": counter.calls, "seconds_per_batch_iteration": per_iter}
    if finished:
        entry["seconds_per_example"] = elapsed / args.n_full
        entry["success_percent"] = 100 * float(res.success.float().mean())
    else:
        entry["seconds_per_example_lower_bound"] = elapsed / args.n_full
        entry["seconds_per_example_upper_bound_extrapolated"] = per_iter * max_iters / args.n_full
    report["full"] = entry
    print(json.dumps(entry, indent=2), flush=True)
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
