"""C&W-L2 speed matrix: ours (each abort rule) next to foolbox and advertorch, cell by cell, with the
forward+backward floor of the machine.

    .venv/bin/python benchmarks/cw_matrix.py --checkpoints RUN/m-ce RUN/m-rce --n 10 \\
        --budgets short,quick --goals targeted,untargeted --kappas 0,10 --out cw_matrix.jsonl

A cell is (model, goal, kappa, budget, batch = --n images); each implementation of a cell runs in a
process of its own (`--run SPEC`), so no run inherits another's allocator or caches, and prints one
JSON line. Every implementation is timed to the same product, adversarial examples + success flags
(the peers' time includes the forward pass that gives their flags). Per run:

* s/example, success, median L2 over the successful examples;
* rows/example: the forward+backward rows it executed (a counting wrapper around the model), i.e.
  the iterations its abort rule chose, per example;
* floor: one forward+backward w.r.t. the input (weights frozen), per image, at the working batch
  (--n), measured in the same process right before the run (best of 3 blocks of 5);
* efficiency = rows x floor / seconds: how close the engine runs to bare forward+backward passes for
  the iterations it executes (continuous batching shrinks ours below --n at the end, where a row
  costs more than at full batch, so this includes that tail). The table uses the median floor of
  the cell's runs (one process's floor varies by ~+-20 % here); the JSON keeps each run's own.

foolbox returns an all-zero image where it found nothing; that image is often "adversarial" by
itself, so a foolbox example counts only where the returned image is not all zeros (the older
attack_speed.py counted those, which inflated foolbox's success at weak budgets).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the peer import shims

BUDGETS = {
    # name: (binary steps, iterations, lr, c0); kappa > 0 uses the quick preset's C&W-hc budget for "quick"
    "short": (3, 100, 0.1, 10.0),
    "quick": (3, 500, 0.1, 10.0),        # the quick MNIST preset's C&W (reproduce/presets.py)
    "quick-hc": (2, 800, 0.1, 10.0),     # the quick MNIST preset's C&W-hc
    "paper-like": (9, 1000, 0.01, 1e-3),  # the earlier attack_speed.py setting: Carlini's defaults, 1 000 iterations
}
IMPLEMENTATIONS = ("ours-example", "ours-window", "ours-none", "foolbox", "advertorch")


class Counting(torch.nn.Module):
    """Counts the rows of every forward pass (one row = one example's iteration)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows, self.num_classes = inner, 0, inner.num_classes

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


def floor_seconds(model, x, blocks=3, reps=5, *, frozen=True, channels_last=False):
    """Seconds per image of one forward+backward w.r.t. the input at batch len(x) (best of `blocks`
    blocks of `reps`); `frozen`: weights requiring no grad meanwhile; `channels_last`: input layout."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(not frozen)
    xx = (x.contiguous(memory_format=torch.channels_last) if channels_last else x.clone()).requires_grad_(True)
    torch.autograd.grad(model(xx).sum(), xx)  # warm-up
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.autograd.grad(model(xx).sum(), xx)
        best = min(best, (time.perf_counter() - t0) / reps)
    for p, requires_grad in zip(params, before):
        p.requires_grad_(requires_grad)
    return best / x.shape[0]


def run_one(spec: dict) -> dict:
    from rcedetect.attacks import cw_l2, random_targets
    from rcedetect.attacks.cw import logit_margin
    from rcedetect.checkpoints import load_checkpoint
    from rcedetect.data import load_dataset

    loaded = load_checkpoint(spec["checkpoint"])
    model = loaded.model.eval()
    data = load_dataset(loaded.config.dataset, "test", spec.get("data_dir"))
    n, start = spec["n"], spec.get("start", 0)
    x, y = data.float_images(slice(start, start + n)), data.labels[start:start + n].clone()
    targeted = spec["goal"] == "targeted"
    labels = random_targets(y, model.num_classes, seed=0) if targeted else y
    bs, iters, lr, c0 = BUDGETS[spec["budget"]]
    kappa, impl = float(spec["kappa"]), spec["impl"]
    floor = floor_seconds(model, x)
    counter = Counting(model).eval()

    if impl.startswith("ours-"):
        def attack():
            kwargs = {"target": labels} if targeted else {}
            out = cw_l2(counter, x, None if targeted else y, kappa=kappa, binary_search_steps=bs, max_iters=iters,
                        lr=lr, initial_const=c0, abort_rule=impl[len("ours-"):], **kwargs)
            return out.x_adv, out.success
    elif impl == "foolbox":
        from peers import foolbox_found, import_foolbox

        fb = import_foolbox()
        fmodel = fb.PyTorchModel(counter, bounds=(0, 1))
        criterion = fb.criteria.TargetedMisclassification(labels) if targeted else fb.criteria.Misclassification(y)
        peer = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=bs, steps=iters, stepsize=lr, confidence=kappa,
                                                initial_const=c0)

        def attack():
            raw, _, _ = peer(fmodel, x, criterion, epsilons=None)
            return torch.where(foolbox_found(raw)[:, None, None, None], raw, x), None
    elif impl == "advertorch":
        from peers import import_advertorch

        adv = import_advertorch()
        peer = adv.attacks.CarliniWagnerL2Attack(counter, num_classes=model.num_classes, confidence=kappa,
                                                 targeted=targeted, learning_rate=lr, binary_search_steps=bs,
                                                 max_iterations=iters, initial_const=c0)

        def attack():
            return peer.perturb(x, labels), None
    else:
        raise SystemExit(f"unknown implementation {impl!r}: choose from {', '.join(IMPLEMENTATIONS)}")

    t0 = time.perf_counter()
    x_adv, success = attack()
    if success is None:  # the peers' flags: one forward pass, inside the timing
        with torch.no_grad():
            margin = logit_margin(model(x_adv), labels, targeted)
        success = (margin > kappa) & (x_adv != x).flatten(1).any(1)
    seconds = time.perf_counter() - t0
    rows = counter.rows
    l2 = (x_adv - x).flatten(1).norm(dim=1)
    return {**spec, "seconds": seconds, "seconds_per_example": seconds / n, "rows": rows, "rows_per_example": rows / n,
            "floor_seconds_per_image": floor, "efficiency": rows * floor / seconds,
            "success": success.float().mean().item(),
            "median_l2": l2[success].median().item() if success.any() else float("nan"),
            "mean_l2": l2[success].mean().item() if success.any() else float("nan"),
            # per example (None where not found), for the paired comparison in render_paired
            "l2_per_example": [v if ok else None for v, ok in zip(l2.tolist(), success.tolist())],
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def render(records: list) -> str:
    """Markdown: one row per cell; per implementation s/example (success, median L2, rows/ex, efficiency)."""
    cells = {}
    for r in records:
        key = (Path(r["checkpoint"]).name, r["goal"], r["kappa"], r["budget"], r["n"])
        cells.setdefault(key, {})[r["impl"]] = r
    impls = [i for i in IMPLEMENTATIONS if any(i in c for c in cells.values())]
    # Efficiency against the cell's median floor: one process's floor varies by ~+-20 % on this shared
    # 2-core machine, the median of the cell's four or five is steadier.
    for runs in cells.values():
        floor = statistics.median(r["floor_seconds_per_image"] for r in runs.values())
        for r in runs.values():
            r["efficiency"] = r["rows"] * floor / r["seconds"]
    head = ["model", "goal", "κ", "budget", "n"] + impls + ["fastest peer / ours-example", "fastest peer / ours-window"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, runs in cells.items():
        row = [str(k) for k in key]
        for impl in impls:
            r = runs.get(impl)
            row.append("–" if r is None else f"{r['seconds_per_example']:.2f} s ({r['success']:.0%}, "
                                             f"{r['median_l2']:.3f}, {r['rows_per_example']:.0f} rows, "
                                             f"eff {r['efficiency']:.0%})")
        peers = [runs[p]["seconds_per_example"] for p in ("foolbox", "advertorch") if p in runs]
        for ours in ("ours-example", "ours-window"):
            row.append(f"{min(peers) / runs[ours]['seconds_per_example']:.2f}×" if peers and ours in runs else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_ratio(a: dict, b: dict) -> tuple:
    """Geometric mean of L2(a) / L2(b) over the examples both runs found, and how many those are: the
    same images and targets in both runs, so one example's luck does not move it as it moves a median."""
    pairs = [(u, v) for u, v in zip(a["l2_per_example"], b["l2_per_example"]) if u is not None and v is not None
             and v > 0]
    if not pairs:
        return float("nan"), 0
    return math.exp(statistics.fmean(math.log(u / v) for u, v in pairs)), len(pairs)


def render_paired(records: list) -> str:
    """Markdown: per cell, each of ours against each peer as the paired L2 ratio (geometric mean over the
    examples both found; 1.000 = equal, below = ours smaller), with foolbox / advertorch, the same
    algorithm in two implementations, as the resolution of the comparison."""
    cells = {}
    for r in records:
        if "l2_per_example" in r:
            cells.setdefault((Path(r["checkpoint"]).name, r["goal"], r["kappa"], r["budget"], r["n"]), {})[r["impl"]] = r
    pairs = [(o, p) for o in ("ours-example", "ours-window", "ours-none") for p in ("foolbox", "advertorch")]
    pairs.append(("foolbox", "advertorch"))
    present = [(o, p) for o, p in pairs if any(o in c and p in c for c in cells.values())]
    head = ["model", "goal", "κ", "budget", "n"] + [f"{o} / {p}" for o, p in present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, runs in cells.items():
        row = [str(k) for k in key]
        for o, p in present:
            if o in runs and p in runs:
                ratio, count = paired_ratio(runs[o], runs[p])
                row.append(f"{ratio:.3f} ({count})")
            else:
                row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: one implementation of one cell, as JSON
    p.add_argument("--checkpoints", nargs="+", default=[])
    p.add_argument("--n", type=int, default=10, help="images per cell = the working batch (default 10)")
    p.add_argument("--budgets", default="short,quick", help=f"comma-separated from {', '.join(BUDGETS)}")
    p.add_argument("--goals", default="targeted,untargeted")
    p.add_argument("--kappas", default="0,10")
    p.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="cw_matrix.jsonl", help="JSON lines, appended (rendered at the end)")
    p.add_argument("--render", action="store_true", help="only render --out as a Markdown table")
    args = p.parse_args(argv)
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))), flush=True)
        return 0
    out = Path(args.out)
    if not args.render:
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
        for checkpoint in args.checkpoints:
            for goal in args.goals.split(","):
                for kappa in (float(k) for k in args.kappas.split(",")):
                    for budget in args.budgets.split(","):
                        if budget == "quick" and kappa > 0:
                            budget = "quick-hc"
                        for impl in args.impls.split(","):
                            spec = {"checkpoint": checkpoint, "goal": goal, "kappa": kappa, "budget": budget,
                                    "n": args.n, "impl": impl, "data_dir": args.data_dir}
                            proc = subprocess.run([sys.executable, __file__, "--run", json.dumps(spec)],
                                                  capture_output=True, text=True)
                            if proc.returncode:
                                print(proc.stderr[-2000:], file=sys.stderr)
                                return proc.returncode
                            line = proc.stdout.strip().splitlines()[-1]
                            with out.open("a") as f:
                                f.write(line + "\n")
                            r = json.loads(line)
                            print(f"{Path(checkpoint).name} {goal} k={kappa:g} {budget} {impl:12s} "
                                  f"{r['seconds_per_example']:.3f} s/ex success {r['success']:.0%} "
                                  f"median L2 {r['median_l2']:.4f} rows/ex {r['rows_per_example']:.0f} "
                                  f"floor {r['floor_seconds_per_image'] * 1e3:.2f} ms eff {r['efficiency']:.0%}",
                                  flush=True)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    print(render(records))
    if any("l2_per_example" in r for r in records):
        print("\n" + render_paired(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
