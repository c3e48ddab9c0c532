"""One writer per run / checkpoint folder (rcedetect.locks): a second writer gets one line naming the
holder's PID, readers never block, a SIGKILLed holder leaves no lock behind."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rcedetect.cli import main
from rcedetect.locks import LOCK_FILE, FolderLock, LockedError, is_locked

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "docs" / "demo-mnist-quick"
HOLDER = ("import sys, time; from rcedetect.locks import FolderLock; FolderLock(sys.argv[1], 'test holder').acquire(); "
          "print('held', flush=True); time.sleep(120)")


@pytest.fixture
def hold():
    """hold(folder) -> the PID of another process that holds the folder's lock until the test ends."""
    procs = []

    def start(folder):
        import os

        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from rcedetect.checkpoints import save_checkpoint
    from rcedetect.config import TrainConfig
    from rcedetect.models import resnet

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", resnet(depth=8).eval(),
                           TrainConfig(dataset="mnist", objective="ce", depth=8, steps=1))


def _one_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_in_process_lock_is_reentrant_and_leaves_nothing(tmp_path):
    folder = tmp_path / "new" / "run"
    with FolderLock(folder, "outer"):
        assert (folder / LOCK_FILE).exists() and is_locked(folder)
        info = json.loads((folder / LOCK_FILE).read_text())
        assert info["what"] == "outer" and info["pid"] > 0
        with FolderLock(folder, "inner"):  # the same process: re-entrant
            pass
        assert (folder / LOCK_FILE).exists()
    assert not folder.exists(), "an empty folder the lock created is removed again"
    (tmp_path / "kept").mkdir()
    with FolderLock(tmp_path / "kept"):
        (tmp_path / "kept" / "result.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["result.json"]


def test_second_writer_gets_the_holders_pid(tmp_path, hold, capsys):
    run = tmp_path / "run"
    proc = hold(run)
    with pytest.raises(LockedError, match=f"PID {proc.pid} \\(test holder"):
        FolderLock(run).acquire()
    # rcedetect reproduce on the locked run folder
    code = main(["reproduce", "--dataset", "mnist", "--preset", "toy", "--out", str(run), "--no-progress",
                 "--device", "cpu"])
    line = _one_error(capsys)
    assert code == 2 and f"PID {proc.pid}" in line and "being written" in line
    # rcedetect train on a locked checkpoint folder
    code = main(["train", "--dataset", "mnist", "--objective", "ce", "--depth", "8", "--steps", "2", "--out",
                 str(run), "--no-progress", "--device", "cpu"])
    assert code == 2 and f"PID {proc.pid}" in _one_error(capsys)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE], "the refused writers wrote nothing"
    # The holder is SIGKILLed: the kernel drops its lock, a new writer gets it at once.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with FolderLock(run, "next"):
        assert json.loads((run / LOCK_FILE).read_text())["what"] == "next"


def test_readers_never_block(tmp_path, hold, capsys, checkpoint, mnist_test):
    # report rendering and reproduce --list on a run folder someone is writing
    run = tmp_path / "docs" / DEMO.name
    shutil.copytree(DEMO / "cells", run / "cells")
    shutil.copy(DEMO / "run.json", run / "run.json")
    hold(run)
    assert main(["reproduce", "--dataset", "mnist", "--preset", "quick", "--out", str(run), "--list"]) == 0
    assert main(["report", str(run)]) == 0 and (run / "report.md").exists()
    capsys.readouterr()
    # detect on a checkpoint whose detector is already saved: no lock needed while another process holds it
    np.save(tmp_path / "x.npy", mnist_test.images[:3].numpy())
    args = ["detect", str(checkpoint), "--metric", "non-me", "--input", str(tmp_path / "x.npy"), "--calibration-size",
            "100", "--device", "cpu"]
    assert main(args) == 0  # fits and saves (takes and releases the lock)
    capsys.readouterr()
    proc = hold(checkpoint)
    assert main(args) == 0 and len(capsys.readouterr().out.strip().splitlines()) == 4  # header + 3 inputs
    # ... but refitting is a write: refused with the holder's PID
    assert main([*args, "--refit"]) == 2 and f"PID {proc.pid}" in _one_error(capsys)
