"""Kill anywhere (issue 12): SIGKILL `rcedetect reproduce --preset toy` and `rcedetect train` at random
moments, resume each time, and require the end result of an uninterrupted run: equal cells (wall-clock
keys aside) and bit-identical weights on CPU.

The moments are drawn from a seeded generator (`RCEDETECT_KILL_SEED`, default 0) and aimed at the
phases of the run: for `reproduce`, the timeline of the uninterrupted reference run (each cell's
wall time, stored in its provenance) says when each cell runs in a resumed process, so a kill is
aimed at a random point inside a randomly chosen cell (training, chunked attacks, detectors, cell
writes) or inside the report rendering; for `train`, a kill follows a randomly chosen saved step
after a random delay (so it lands between saves too). Where each kill landed is recorded (the phase
seen in the run folder) and, with `RCEDETECT_RELIABILITY_LOG` set, appended to that file for
`scripts/reliability.py`.

The full versions (5 kills each) are `slow`; the default suite runs 2-kill versions on a small part
of the run (the toy preset's two ResNet-14 trainings and their detector cells; a 40-step training).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcedetect.reproduce.schema import stored_results

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("RCEDETECT_KILL_SEED", "0"))


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _command(*args):
    return [sys.executable, "-m", "rcedetect", *args]


def _log(**entry):
    path = os.environ.get("RCEDETECT_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")




def _weights(run_dir: Path) -> dict:
    from rcedetect.files import sha256_file

    return {p.parent.name: sha256_file(p) for p in sorted(run_dir.glob("models/*/model.safetensors"))}


def _phase(run_dir: Path) -> str:
    """Where a killed reproduction was, judged from its folder."""
    if list(run_dir.glob("models/*/train_state.safetensors")):
        return "training"
    if list(run_dir.glob("cache/*.parts/*.safetensors")):
        return "chunked attack"
    cells = len(list(run_dir.glob("cells/*.json")))
    return f"cells ({cells} stored)"


# ---------------------------------------------------------------------------------- reproduce
def _reproduce(out, only, report):
    args = ["reproduce", "--dataset", "mnist", "--preset", "toy", "--out", str(out), "--no-progress",
            "--device", "cpu"]
    if only:
        args += ["--only", *only]
    return _command(*args, *([] if report else ["--no-report"]))


def _timeline(run_dir: Path, only, started: float, ended: float):
    """[(cell, wall seconds)] of an uninterrupted run in run order (the plan's), and the overhead outside
    the cells (start-up, and the report when rendered)."""
    from rcedetect.reproduce import Reproduction

    plan = Reproduction("mnist", "toy", run_dir, device="cpu", progress=False).select(only)
    walls = [(c.name, json.loads((run_dir / "cells" / f"{c.name}.json").read_text())["provenance"]["wall_seconds"])
             for c in plan]
    overhead = max(0.0, (ended - started) - sum(w for _, w in walls))
    return walls, overhead


def _kill_reproduce(tmp_path, kills: int, only=None, report=True, trained=False):
    """`trained`: start the killed run with the reference's trained models (kills land in the cells
    after training only)."""
    import shutil

    reference = tmp_path / "reference"
    t0 = time.time()
    subprocess.run(_reproduce(reference, only, report), env=_env(), check=True, capture_output=True)
    timeline, overhead = _timeline(reference, only, t0, time.time())
    startup = overhead * (0.4 if report else 0.9)  # the rest of the overhead is the report
    rng = random.Random(SEED)
    run = tmp_path / "killed"
    if trained:
        shutil.copytree(reference / "models", run / "models")
        timeline = [(name, 0.0 if name.startswith("train.") else wall) for name, wall in timeline]
    # Aim the kills at cells spread over the plan (and at the report rendering), in run order.
    candidates = [i for i, (name, _) in enumerate(timeline) if not (trained and name.startswith("train."))]
    targets = sorted(rng.sample(candidates + ([len(timeline)] if report else []), kills))
    landed = []
    for target in targets:
        done = {p.stem for p in run.glob("cells/*.json")}
        before = sum(w for name, w in timeline[:target] if name not in done) if target else 0.0
        inside = timeline[target][1] if target < len(timeline) else overhead - startup
        delay = startup + before + rng.uniform(0.05, 0.95) * max(inside, 0.2)
        proc = subprocess.Popen(_reproduce(run, only, report), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            landed.append(("finished before the kill", delay))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            aimed = timeline[target][0] if target < len(timeline) else "report"
            landed.append((f"aimed at {aimed}, found {_phase(run)}", round(delay, 2)))
    subprocess.run(_reproduce(run, only, report), env=_env(), check=True, capture_output=True)
    identical = stored_results(run) == stored_results(reference) and _weights(run) == _weights(reference)
    for where, delay in landed:
        _log(kind="kill", command="reproduce", where=where, after_seconds=delay, resumed_identical=identical)
    assert stored_results(run) == stored_results(reference)
    assert _weights(run) == _weights(reference)
    assert not list(run.glob("cache/*.parts/*")) and not list(run.rglob("*.tmp"))
    if report:
        assert (run / "report.md").exists()
    killed = [w for w, _ in landed if not w.startswith("finished")]
    assert len(killed) >= max(1, kills - 1), landed
    return landed


@pytest.mark.slow
def test_reproduce_killed_at_five_random_moments_resumes_to_the_samestored_results(tmp_path):
    landed = _kill_reproduce(tmp_path, kills=5)
    print("\n".join(f"kill after {d} s: {w}" for w, d in landed))


def test_reproduce_killed_twice_resumes_to_the_samestored_results(tmp_path):
    # Cheap: the toy preset's ResNet-14 models trained by the reference, kills inside their detector cells.
    _kill_reproduce(tmp_path, kills=2, only=["train.resnet14", "detector.resnet14"], report=False, trained=True)


# -------------------------------------------------------------------------------------- train
def _train(out, steps, resume=False):
    return _command("train", "--dataset", "mnist", "--objective", "ce", "--depth", "8", "--steps", str(steps),
                    "--checkpoint-every", "3", "--out", str(out), "--no-progress", "--device", "cpu",
                    *(["--resume"] if resume else []))


def _saved_step(state: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(state), framework="pt") as f:
            return int(f.metadata()["step"])
    except Exception:  # noqa: BLE001 -- not there yet
        return None


def _kill_train(tmp_path, kills: int, steps: int):
    from rcedetect.files import sha256_file

    subprocess.run(_train(tmp_path / "reference", steps), env=_env(), check=True, capture_output=True)
    reference = sha256_file(tmp_path / "reference" / "model.safetensors")
    rng = random.Random(SEED + 1)
    out = tmp_path / "killed"
    state = out / "train_state.safetensors"
    saves = list(range(3, steps, 3))
    landed = []
    for target in sorted(rng.sample(saves, kills)):
        proc = subprocess.Popen(_train(out, steps, resume=True), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and (_saved_step(state) or 0) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))  # then somewhere between this save and the next ones
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed.append(_saved_step(state))
        else:
            landed.append("finished")
    subprocess.run(_train(out, steps, resume=True), env=_env(), check=True, capture_output=True)
    identical = sha256_file(out / "model.safetensors") == reference
    for step in landed:
        _log(kind="kill", command="train", where=f"after saved step {step}", resumed_identical=identical)
    if not identical:
        _uninterrupted_runs_agree(tmp_path, steps, reference, landed)
    assert identical, landed
    assert not state.exists()
    assert sum(1 for s in landed if s != "finished") >= max(1, kills - 1), landed
    return landed


def _uninterrupted_runs_agree(tmp_path, steps, reference, landed):
    """After a mismatch: whether a second uninterrupted run in a fresh process reproduces the reference.
    If it does not, this machine's CPU kernels are not bitwise reproducible across processes (measured
    here at times: see docs/reliability.md) and a resume cannot be judged bit for bit: xfail, saying so."""
    from rcedetect.files import sha256_file

    subprocess.run(_train(tmp_path / "reference2", steps), env=_env(), check=True, capture_output=True)
    again = sha256_file(tmp_path / "reference2" / "model.safetensors")
    _log(kind="note", command="train", where=f"second uninterrupted run {'equals' if again == reference else 'differs'}")
    if again != reference:
        pytest.xfail(f"two uninterrupted training runs in fresh processes differ bitwise ({reference[:12]} vs "
                     f"{again[:12]}): resume after kills at {landed} cannot be judged bit for bit here")


@pytest.mark.slow
def test_train_killed_at_five_random_steps_resumes_bit_identically(tmp_path):
    print(_kill_train(tmp_path, kills=5, steps=60))


def test_train_killed_twice_resumes_bit_identically(tmp_path):
    _kill_train(tmp_path, kills=2, steps=24)
