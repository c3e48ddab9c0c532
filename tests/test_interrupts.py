"""Ctrl-C (KeyboardInterrupt) in the middle of each sub-command: exit status 130, one line on stderr,
and no partial output (no temp file, no half-written result; what was complete before stays usable)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from rcedetect import files
from rcedetect.cli import INTERRUPTED, main
from rcedetect.locks import LOCK_FILE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from rcedetect.checkpoints import save_checkpoint
    from rcedetect.config import TrainConfig
    from rcedetect.models import resnet

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", resnet(depth=8).eval(),
                           TrainConfig(dataset="mnist", objective="ce", depth=8, steps=1))


def _interrupt_on_call(monkeypatch, target: str, after: int = 0):
    """Make `target` (module.attr) raise KeyboardInterrupt on its call number `after` + 1."""
    import importlib

    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable prefix, then attributes
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
            break
        except ImportError:
            continue
    for name in parts[cut:-1]:
        owner = getattr(owner, name)
    module, attr = owner, parts[-1]
    real = getattr(module, attr)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, interrupted)
    return calls


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _assert_interrupted(code, capsys, root):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err == [INTERRUPTED], err
    leftovers = [f for f in _files(root) if f.endswith(".tmp") or f.endswith(LOCK_FILE)]
    assert leftovers == [], leftovers


def test_interrupted_attack_writes_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    from rcedetect.attacks import ATTACKS
    import dataclasses

    spec = ATTACKS["fgsm"]
    calls = []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return spec.run(*a, **k)

    monkeypatch.setitem(ATTACKS, "fgsm", dataclasses.replace(spec, run=dying))
    code = main(["attack", str(checkpoint), "--attack", "fgsm", "--eps", "0.1", "--n", "4", "--batch-size", "2",
                 "--out", str(tmp_path / "adv"), "--no-progress", "--device", "cpu"])
    _assert_interrupted(code, capsys, tmp_path)
    assert _files(tmp_path) == []


def test_interrupted_write_keeps_the_previous_file(checkpoint, tmp_path, capsys, monkeypatch):
    """Ctrl-C inside the atomic write itself (between write and rename): the old eval.json stays."""
    out = tmp_path / "eval.json"
    out.write_text('{"old": true}\n')
    _interrupt_on_call(monkeypatch, "rcedetect.files.os.replace")
    code = main(["eval", str(checkpoint), "--json", str(out), "--device", "cpu"])
    _assert_interrupted(code, capsys, tmp_path)
    assert json.loads(out.read_text()) == {"old": True} and _files(tmp_path) == ["eval.json"]


def test_interrupted_detect_and_report_write_nothing(checkpoint, tmp_path, capsys, monkeypatch, mnist_test):
    np.save(tmp_path / "x.npy", mnist_test.images[:3].numpy())
    before = _files(checkpoint)
    _interrupt_on_call(monkeypatch, "rcedetect.detectors.session.DetectorSession.score_images")
    code = main(["detect", str(checkpoint), "--input", str(tmp_path / "x.npy"), "--metric", "non-me",
                 "--calibration-size", "100", "--device", "cpu"])
    _assert_interrupted(code, capsys, checkpoint)
    # The detector was fitted and saved before the interrupt: complete files, loadable; nothing else.
    from rcedetect.detectors.persistence import load_detector

    assert _files(checkpoint) == sorted(before + ["detector-non-me.json", "detector-non-me.safetensors"])
    load_detector(checkpoint, "non-me")
    before = _files(checkpoint)
    assert _files(tmp_path) == ["x.npy"]
    monkeypatch.undo()
    _interrupt_on_call(monkeypatch, "rcedetect.detectors.session.DetectorSession.test_outputs")
    code = main(["detect", str(checkpoint), "--report", "--output", str(tmp_path / "r.json"),
                 "--calibration-size", "100", "--device", "cpu"])
    _assert_interrupted(code, capsys, checkpoint)
    assert _files(checkpoint) == before and not (tmp_path / "r.json").exists()


def test_interrupted_training_resumes(tmp_path, capsys, monkeypatch, data_dir):
    """Ctrl-C at step 5 of 8 with a save every 2 steps: a complete, resumable state (step 4) and no model;
    --resume then finishes with the weights of an uninterrupted run."""
    argv = ["train", "--dataset", "mnist", "--objective", "ce", "--depth", "8", "--steps", "8",
            "--checkpoint-every", "2", "--no-progress", "--device", "cpu"]
    import rcedetect.training as training

    real = training.OBJECTIVES["ce"]
    calls = []

    def loss(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setitem(training.OBJECTIVES, "ce", loss)
    code = main([*argv, "--out", str(tmp_path / "run")])
    _assert_interrupted(code, capsys, tmp_path)
    assert _files(tmp_path / "run") == ["train_state.safetensors"]
    monkeypatch.undo()
    assert main([*argv, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert files.sha256_file(tmp_path / "run" / "model.safetensors") == \
        files.sha256_file(tmp_path / "whole" / "model.safetensors")


def test_interrupted_reproduce_keeps_finished_cells_only(tmp_path, capsys, monkeypatch, data_dir, tiny_checkpoints):
    from rcedetect.reproduce import Reproduction

    run = tmp_path / "toy"
    rep = Reproduction("mnist", "toy", run, device="cpu", progress=False)
    for objective in ("ce", "rce"):
        shutil.copytree(tiny_checkpoints[objective], rep.checkpoint_dir(0, objective))
    # Interrupt the detector cell of the CE model (after both train cells were stored).
    _interrupt_on_call(monkeypatch, "rcedetect.reproduce.cells.models.DetectorCell.compute")
    code = main(["reproduce", "--dataset", "mnist", "--preset", "toy", "--out", str(run), "--no-progress",
                 "--only", "train.resnet8", "detector.resnet8", "--device", "cpu"])
    _assert_interrupted(code, capsys, run)
    assert sorted(os.listdir(run / "cells")) == ["train.resnet8-ce.json", "train.resnet8-rce.json"]
    for name in os.listdir(run / "cells"):
        json.loads((run / "cells" / name).read_text())  # complete JSON
    monkeypatch.undo()
    _interrupt_on_call(monkeypatch, "rcedetect.reproduce.report.make_figures")
    code = main(["report", str(run)])
    _assert_interrupted(code, capsys, run)
    assert not (run / "report.md").exists() and not (run / "report.html").exists()


@pytest.mark.parametrize("command", ["demo", "threat-models"])
def test_interrupt_while_starting_other_commands(command, checkpoint, tmp_path, capsys, monkeypatch):
    target = ("rcedetect.reproduce.Reproduction.run" if command == "demo"
              else "rcedetect.evaluation.threat_models.threat_model_report")
    _interrupt_on_call(monkeypatch, target)
    argv = (["demo", "--out", str(tmp_path / "demo"), "--no-progress", "--device", "cpu"] if command == "demo"
            else ["threat-models", str(checkpoint), "--output", str(tmp_path / "tm.json"), "--device", "cpu"])
    _assert_interrupted(main(argv), capsys, tmp_path)
    assert _files(tmp_path) == []
