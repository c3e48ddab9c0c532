"""Wall time of the toy reproduction in one process and under torchrun, and the cost model's estimate
of the paper preset on 1, 4 and 8 devices (issue 17).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_out.py [--preset toy] [--out /tmp/scale]

Runs `rcedetect reproduce --preset PRESET --no-report` from an empty run folder (models trained
included) as 1 process x 1 thread, 1 process x 2 threads and torchrun 2 ranks x 1 thread, prints each
wall time, and checks that the 2-rank cells equal the 1 x 1 cells (wall-clock keys aside).
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rcedetect.reproduce.schema import stored_results

REPO = Path(__file__).resolve().parents[1]


def _load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--out", default="/tmp/rcedetect-scale-out")
    args = parser.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    reproduce = ["-m", "rcedetect", "reproduce", "--dataset", args.dataset, "--preset", args.preset,
                 "--no-progress", "--no-report", "--device", "cpu"]
    runs = {
        "1 process x 1 thread": (1, [sys.executable, *reproduce]),
        "1 process x 2 threads": (2, [sys.executable, *reproduce]),
        "torchrun 2 ranks x 1 thread": (1, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc-per-node", "2", *reproduce]),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    walls = {}
    print(f"{args.dataset} / {args.preset}, {os.cpu_count()} CPUs, torch run from {REPO}")
    for i, (name, (threads, command)) in enumerate(runs.items()):
        out = root / f"run{i}"
        load = _load()
        t0 = time.perf_counter()
        subprocess.run([*command, "--out", str(out)], env={**env, "OMP_NUM_THREADS": str(threads)}, check=True,
                       capture_output=True)
        walls[name] = time.perf_counter() - t0
        print(f"{name:30s} {walls[name]:7.1f} s   (load average before: {load})", flush=True)
    same = stored_results(root / "run2") == stored_results(root / "run0")
    print(f"2-rank cells equal the 1 x 1 cells: {same}")
    base = walls["1 process x 1 thread"]
    for name, wall in walls.items():
        print(f"speed-up of {name}: {base / wall:.2f}x")

    sys.path.insert(0, str(REPO / "src"))
    from rcedetect.reproduce import Reproduction

    print("\ncost model (quiet 2-core CPU seconds) of the paper preset under torchrun's schedule:")
    for dataset in ("mnist", "cifar10"):
        rep = Reproduction(dataset, "paper", root / f"estimate-{dataset}", device="cpu", progress=False)
        one = rep.estimate_seconds()
        row = "  ".join(f"{w} ranks {rep.estimate_seconds(w) / 3600:8.1f} h ({one / rep.estimate_seconds(w):.2f}x)"
                        for w in (1, 4, 8))
        print(f"{dataset:8s} {row}")


if __name__ == "__main__":
    main()
