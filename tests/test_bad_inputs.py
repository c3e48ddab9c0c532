"""Bad inputs across every sub-command (issue 12), table-driven: each case must end with exit status 2,
exactly one stderr line `error: <problem>: <fix>` naming what the table expects, nothing on stdout, no
traceback, and no file created or changed anywhere under the test's folders (checkpoints included).

Cases run in-process through `rcedetect.cli.main(argv)` and are refused before any data is loaded
(the few that need the weights load an untrained depth-8 checkpoint), so the file runs in seconds.
`python -m pytest tests/test_bad_inputs.py -v` lists the cases by name.
"""

import hashlib
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from rcedetect.cli import main

CKPT_ARGS = ["--device", "cpu"]


# ------------------------------------------------------------------------------------------ files
def _checkpoint(directory: Path, dataset="mnist", objective="rce"):
    from rcedetect.checkpoints import save_checkpoint
    from rcedetect.config import TrainConfig
    from rcedetect.data import DATASETS
    from rcedetect.models import resnet

    torch.manual_seed(0)
    info = DATASETS[dataset]
    model = resnet(depth=8, in_channels=info.in_channels, num_classes=info.num_classes).eval()
    return save_checkpoint(directory, model, TrainConfig(dataset=dataset, objective=objective, depth=8, steps=1))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height pixels, with one tiny IDAT (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _npy_header(shape, dtype="<f4") -> bytes:
    """An .npy header claiming `shape` followed by no data (a multi-GB claim in a few bytes)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _torch_zip_with(payload: bytes) -> bytes:
    """A file laid out as torch.save's zip archive whose data.pkl is `payload`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def _cell(name, config, weights=None, run=None):
    from rcedetect.reproduce.store import CELL_FORMAT

    record = {"format": CELL_FORMAT, "cell": name, "config": config, "seed": 0, "result": {}, "provenance": {}}
    if weights is not None:
        record["weights_sha256"] = weights
    if run is not None:
        record["run"] = run
    return record


def _run_folder(root: Path, cells: dict, info=None):
    (root / "cells").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps(info or {"format": "rcedetect-run-v1", "dataset": "mnist",
                                                       "preset": "toy", "settings": {}}))
    for name, record in cells.items():
        (root / "cells" / f"{name}.json").write_text(json.dumps(record))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every file and folder the cases point at, under one root (snapshotted around each case)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    ckpt = _checkpoint(root / "ckpt")
    cifar = _checkpoint(root / "cifar", dataset="cifar10")
    (root / "file").write_text("a regular file, not a folder\n")
    (root / "empty").mkdir()
    (root / "outdir").mkdir()
    broken = root / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    inputs = root / "inputs"
    inputs.mkdir()
    np.save(inputs / "ok.npy", np.zeros((2, 1, 28, 28), np.float32))
    (inputs / "x.txt").write_text("pixels?")
    (inputs / "legacy.pt").write_bytes(pickle.dumps(torch.zeros(1, 1, 28, 28).numpy()))  # a raw pickle
    (inputs / "exploit.pt").write_bytes(_torch_zip_with(pickle.dumps(_Exploit(), protocol=2)))
    np.save(inputs / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (inputs / "huge.npy").write_bytes(_npy_header((100_000, 1, 28, 28 * 100)))  # claims 29 GB, holds 0
    (inputs / "truncated.npy").write_bytes(_npy_header((4, 1, 28, 28)) + b"\x00" * 100)
    (inputs / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    (inputs / "folder.npy").mkdir()
    torch.save(torch.zeros(1, 1, 28, 28), inputs / "ok.pt")
    # Run folders for `report` / `reproduce`.
    identity = json.loads((ckpt / "model.json").read_text())["config"]
    other_identity = {**identity, "steps": 2}
    tag = "resnet8-rce"
    _run_folder(root / "runs" / "toy", {"train.resnet8-rce": _cell("train.resnet8-rce", {"dataset": "mnist",
                                                                                        "model": identity})})
    _run_folder(root / "runs" / "mixed-weights", {
        "train.resnet8-rce": _cell("train.resnet8-rce", {"dataset": "mnist", "model": identity}, {tag: "a" * 64}),
        "table2.fgsm.rce": _cell("table2.fgsm.rce", {"dataset": "mnist", "model": identity}, {tag: "b" * 64})})
    _run_folder(root / "runs" / "other-preset", {
        "train.resnet8-rce": _cell("train.resnet8-rce", {"dataset": "mnist", "model": identity}, {tag: "a" * 64},
                                   run={"dataset": "mnist", "preset": "quick"})})
    _run_folder(root / "runs" / "mixed-models", {
        "train.resnet8-rce": _cell("train.resnet8-rce", {"dataset": "mnist", "model": identity}),
        "table2.fgsm.rce": _cell("table2.fgsm.rce", {"dataset": "mnist", "model": other_identity})})
    _run_folder(root / "runs" / "no-cells", {})
    (root / "runs" / "no-run-json").mkdir()
    garbage = root / "runs" / "garbage"
    garbage.mkdir()
    (garbage / "run.json").write_text("[1, 2")
    return root


def _snapshot(root: Path) -> dict:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (digest, st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------ cases
# name -> (argv with {root} for the test folder, substrings the one error line must contain)
T = "{root}"
CK, CIFAR = f"{T}/ckpt", f"{T}/cifar"
IN = f"{T}/inputs"
TRAIN = ["train", "--dataset", "mnist", "--objective", "rce", "--no-progress"]
ATTACK = ["attack", CK, "--no-progress", *CKPT_ARGS]
DETECT = ["detect", CK, *CKPT_ARGS]
TM = ["threat-models", CK, "--no-progress", *CKPT_ARGS]
REPRO = ["reproduce", "--dataset", "mnist", "--preset", "toy", "--no-progress", "--no-report"]

CASES = {
    # ------------------------------------------------------------------ train
    "train-depth-not-6n+2": ([*TRAIN, "--depth", "10", "--out", f"{T}/new"], ["--depth", "6n+2"]),
    "train-depth-too-small": ([*TRAIN, "--depth", "2", "--out", f"{T}/new"], ["--depth", ">= 8"]),
    "train-depth-not-a-number": ([*TRAIN, "--depth", "x", "--out", f"{T}/new"], ["--depth", "invalid int"]),
    "train-zero-steps": ([*TRAIN, "--steps", "0", "--out", f"{T}/new"], ["--steps", ">= 1"]),
    "train-negative-seed": ([*TRAIN, "--seed", "-1", "--out", f"{T}/new"], ["--seed", ">= 0"]),
    "train-zero-checkpoint-every": ([*TRAIN, "--checkpoint-every", "0", "--out", f"{T}/new"],
                                    ["--checkpoint-every", ">= 1"]),
    "train-unknown-dataset": (["train", "--dataset", "svhn", "--objective", "ce", "--out", f"{T}/new"],
                              ["--dataset", "invalid choice"]),
    "train-missing-out": (["train", "--dataset", "mnist", "--objective", "ce"], ["--out", "required"]),
    "train-out-is-a-file": ([*TRAIN, "--out", f"{T}/file"], ["--out", "is a file", "choose another"]),
    "train-out-under-a-file": ([*TRAIN, "--out", f"{T}/file/sub"], ["--out", "is a file", "outside it"]),
    "train-out-holds-a-model": ([*TRAIN, "--depth", "8", "--steps", "1", "--out", CK],
                                ["already holds a trained model", "another --out"]),
    "train-resume-other-settings": ([*TRAIN, "--depth", "8", "--steps", "2", "--resume", "--out", CK],
                                    ["other settings", "steps", "new --out"]),
    "train-data-dir-is-a-file": ([*TRAIN, "--data-dir", f"{T}/file", "--out", f"{T}/new"],
                                 ["--data-dir", "is a file"]),
    "train-cuda-absent": ([*TRAIN, "--device", "cuda", "--out", f"{T}/new"], ["CUDA is not available", "--device cpu"]),
    # ------------------------------------------------------------------- eval
    "eval-missing-checkpoint": (["eval", f"{T}/nowhere"], ["does not exist", "rcedetect train"]),
    "eval-folder-is-no-checkpoint": (["eval", f"{T}/empty"], ["not a checkpoint folder", "rcedetect train"]),
    "eval-corrupt-sidecar": (["eval", f"{T}/broken"], ["not valid JSON", "re-run training"]),
    "eval-json-is-a-folder": (["eval", CK, "--json", f"{T}/outdir"], ["--json", "is a folder"]),
    "eval-json-under-a-file": (["eval", CK, "--json", f"{T}/file/eval.json"], ["--json", "is a file"]),
    # ----------------------------------------------------------------- detect
    "detect-fpr-of-one": ([*DETECT, "--report", "--fpr", "1"], ["--fpr 1", "[0, 1)"]),
    "detect-negative-fpr": ([*DETECT, "--report", "--fpr", "-0.1"], ["--fpr -0.1", "[0, 1)"]),
    "detect-calibration-size-of-the-whole-test-set": ([*DETECT, "--report", "--calibration-size", "10000"],
                                                      ["--calibration-size", "9999"]),
    "detect-zero-n-per-class": ([*DETECT, "--report", "--n-per-class", "0"], ["--n-per-class", ">= 1"]),
    "detect-negative-bandwidth": ([*DETECT, "--report", "--bandwidth-sq", "-1"], ["--bandwidth-sq", "(0, inf)"]),
    "detect-zero-batch-size": ([*DETECT, "--report", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    "detect-input-and-report": ([*DETECT, "--report", "--input", f"{IN}/ok.npy"], ["--input", "not allowed"]),
    "detect-missing-input": ([*DETECT, "--input", f"{IN}/missing.npy"], ["does not exist", "check the path"]),
    "detect-unsupported-input": ([*DETECT, "--input", f"{IN}/x.txt"], ["unsupported file type", ".npy"]),
    "detect-input-is-a-folder": ([*DETECT, "--input", f"{IN}/folder.npy"], ["is a folder", "pass a file"]),
    "detect-output-without-report": ([*DETECT, "--input", f"{IN}/ok.npy", "--output", f"{T}/r.json"],
                                     ["--output", "only with --report"]),
    "detect-pixel-scale-with-report": ([*DETECT, "--report", "--pixel-scale", "255"], ["--pixel-scale", "drop it"]),
    "detect-negative-pixel-scale": ([*DETECT, "--input", f"{IN}/ok.npy", "--pixel-scale", "-1"],
                                    ["--pixel-scale", "(0, inf)"]),
    "detect-report-output-is-a-folder": ([*DETECT, "--report", "--output", f"{T}/outdir"], ["--output", "is a folder"]),
    "detect-legacy-pickle-pt": ([*DETECT, "--input", f"{IN}/legacy.pt"],
                                ["raw or legacy pickle", "never unpickles", ".safetensors"]),
    "detect-pt-with-code": ([*DETECT, "--input", f"{IN}/exploit.pt"], ["imports", "system", "never unpickles"]),
    "detect-object-npy": ([*DETECT, "--input", f"{IN}/object.npy"], ["object (pickled)", "np.save"]),
    "detect-npy-claiming-29-GB": ([*DETECT, "--input", f"{IN}/huge.npy"], ["input limit", "smaller files"]),
    "detect-truncated-npy": ([*DETECT, "--input", f"{IN}/truncated.npy"], ["truncated", "np.save"]),
    "detect-png-decompression-bomb": ([*DETECT, "--input", f"{IN}/bomb.png"], ["100000x100000", "limit"]),
    # ----------------------------------------------------------------- attack
    "attack-linf-eps-above-one": ([*ATTACK, "--attack", "fgsm", "--eps", "3", "--out", f"{T}/a"], ["--eps 3", "(0, 1]"]),
    "attack-negative-eps": ([*ATTACK, "--attack", "bim", "--eps", "-0.1", "--out", f"{T}/a"], ["--eps -0.1", "(0, 1]"]),
    "attack-nan-eps": ([*ATTACK, "--attack", "ilcm", "--eps", "nan", "--out", f"{T}/a"], ["--eps nan", "e.g."]),
    "attack-missing-eps": ([*ATTACK, "--attack", "fgsm", "--out", f"{T}/a"], ["needs --eps", "e.g. --eps 0.1"]),
    "attack-eps-for-cw": ([*ATTACK, "--attack", "cw", "--eps", "0.1", "--out", f"{T}/a"], ["takes no eps", "drop"]),
    "attack-rand-amplitude-above-one": ([*ATTACK, "--attack", "rand", "--eps", "1.5", "--out", f"{T}/a"],
                                        ["--eps 1.5", "[0, 1]"]),
    "attack-n-past-the-test-set": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--n", "20000", "--out", f"{T}/a"],
                                   ["only 10000", "lower --n"]),
    "attack-start-past-the-train-set": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--split", "train", "--start",
                                         "59999", "--n", "2", "--out", f"{T}/a"], ["only 60000", "at most 1"]),
    "attack-negative-start": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--start", "-1", "--out", f"{T}/a"],
                              ["--start", ">= 0"]),
    "attack-zero-batch-size": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--batch-size", "0", "--out", f"{T}/a"],
                               ["--batch-size", ">= 1"]),
    "attack-out-under-a-file": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--out", f"{T}/file/adv"],
                                ["--out", "is a file"]),
    "attack-out-is-a-folder": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--out", f"{T}/outdir"],
                               ["--out", "is a folder"]),
    "attack-out-wrong-extension": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--out", f"{T}/adv.npy"],
                                   ["extension .npy", ".safetensors"]),
    "attack-jsma-theta-zero": ([*ATTACK, "--attack", "jsma", "--theta", "0", "--out", f"{T}/a"],
                               ["--theta 0", "e.g. --theta 1"]),
    "attack-jsma-eps-above-one": ([*ATTACK, "--attack", "jsma", "--eps", "2", "--out", f"{T}/a"], ["--eps 2", "[-1, 1]"]),
    "attack-jsma-gamma-above-one": ([*ATTACK, "--attack", "jsma", "--gamma", "1.5", "--out", f"{T}/a"],
                                    ["--gamma 1.5", "(0, 1]"]),
    "attack-cw-negative-lr": ([*ATTACK, "--attack", "cw", "--lr", "-0.01", "--out", f"{T}/a"], ["--lr -0.01", "(0, inf)"]),
    "attack-cw-zero-binary-search-steps": ([*ATTACK, "--attack", "cw", "--binary-search-steps", "0", "--out", f"{T}/a"],
                                           ["--binary-search-steps", ">= 1"]),
    "attack-cw-negative-kappa": ([*ATTACK, "--attack", "cw-hc", "--kappa", "-1", "--out", f"{T}/a"],
                                 ["--kappa -1", "[0, inf)"]),
    "attack-bim-zero-steps": ([*ATTACK, "--attack", "bim", "--eps", "0.1", "--steps", "0", "--out", f"{T}/a"],
                              ["--steps", ">= 1"]),
    "attack-option-of-another-attack": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--kappa", "1", "--out", f"{T}/a"],
                                        ["--kappa does not apply to --attack fgsm", "drop it"]),
    "attack-detector-for-fgsm": ([*ATTACK, "--attack", "fgsm", "--eps", "0.1", "--detector", "kd", "--out", f"{T}/a"],
                                 ["--detector applies only", "drop it"]),
    "attack-cw-wb-non-kd-detector": ([*ATTACK, "--attack", "cw-wb", "--detector", "non-me", "--out", f"{T}/a"],
                                     ["K-density", "--detector kd"]),
    "attack-pgd-l2-radius-above-the-diameter": ([*ATTACK, "--attack", "adaptive-pgd", "--norm", "l2", "--eps", "30",
                                                 "--out", f"{T}/a"], ["--eps 30", "[0, 28]"]),
    "attack-pgd-missing-eps": ([*ATTACK, "--attack", "adaptive-pgd", "--out", f"{T}/a"], ["needs --eps", "e.g."]),
    "attack-substitute-of-another-dataset": ([*ATTACK, "--attack", "cw-wb", "--substitute", CIFAR, "--out", f"{T}/a"],
                                             ["cifar10", "same dataset"]),
    "attack-threat-model-on-train-split": ([*ATTACK, "--attack", "cw-wb", "--split", "train", "--out", f"{T}/a"],
                                           ["test images only", "drop --split"]),
    "attack-unknown-attack": ([*ATTACK, "--attack", "deepfool", "--out", f"{T}/a"], ["--attack", "invalid choice"]),
    # ---------------------------------------------------------- threat-models
    "threat-models-table4-without-targets": ([*TM, "--tables", "table4"], ["--targets", "drop table4"]),
    "threat-models-lid-outside-the-worst-case": ([*TM, "--tables", "adaptive", "--metrics", "lid"],
                                                 ["--tables worstcase", "--fit-adversarial"]),
    "threat-models-mixed-datasets": ([*TM, "--targets", CIFAR], ["one dataset", "same dataset"]),
    "threat-models-negative-eps": ([*TM, "--eps", "0", "-0.1"], ["--eps -0.1", "[0, 1]"]),
    "threat-models-n-past-the-test-set": ([*TM, "--n", "6000"], ["only 10000", "lower --n"]),
    "threat-models-n-per-class-one": ([*TM, "--n-per-class", "1"], ["--n-per-class", ">= 2"]),
    "threat-models-output-under-a-file": ([*TM, "--output", f"{T}/file/tm.json"], ["--output", "is a file"]),
    # -------------------------------------------------------------- reproduce
    "reproduce-out-is-a-file": ([*REPRO, "--out", f"{T}/file"], ["--out", "is a file"]),
    "reproduce-out-under-a-file": ([*REPRO, "--out", f"{T}/file/run"], ["--out", "is a file", "outside it"]),
    "reproduce-folder-of-another-preset": (["reproduce", "--dataset", "mnist", "--preset", "quick", "--out",
                                            f"{T}/runs/toy"], ["mnist / toy run", "another --out"]),
    "reproduce-folder-of-another-dataset": (["reproduce", "--dataset", "cifar10", "--preset", "toy", "--out",
                                             f"{T}/runs/toy"], ["mnist / toy run", "another --out"]),
    "reproduce-only-matches-nothing": ([*REPRO, "--out", f"{T}/new-run", "--only", "tabel2"],
                                       ["--only tabel2 matches no cell", "--list"]),
    "reproduce-data-dir-is-a-file": ([*REPRO, "--out", f"{T}/new-run", "--data-dir", f"{T}/file"],
                                     ["--data-dir", "is a file"]),
    "reproduce-unknown-preset": (["reproduce", "--dataset", "mnist", "--preset", "huge"], ["--preset", "invalid choice"]),
    # ------------------------------------------------------------------- demo
    "demo-out-under-a-file": (["demo", "--out", f"{T}/file/demo", "--no-progress"], ["--out", "is a file"]),
    "demo-only-matches-nothing": (["demo", "--out", f"{T}/demo-run", "--only", "nothing"], ["matches no cell"]),
    # ----------------------------------------------------------------- report
    "report-missing-folder": (["report", f"{T}/runs/nowhere"], ["does not exist", "--out folder"]),
    "report-run-is-a-file": (["report", f"{T}/file"], ["is a file", "--out folder"]),
    "report-folder-without-run-json": (["report", f"{T}/runs/no-run-json"], ["no run.json", "rcedetect reproduce"]),
    "report-run-json-not-json": (["report", f"{T}/runs/garbage"], ["not valid JSON", "rewrite it"]),
    "report-no-cells-yet": (["report", f"{T}/runs/no-cells"], ["no results yet", "rcedetect reproduce"]),
    "report-cells-from-different-weights": (["report", f"{T}/runs/mixed-weights"],
                                            ["different weights of resnet8-rce", "re-run"]),
    "report-cells-of-another-preset": (["report", f"{T}/runs/other-preset"], ["mnist / quick run", "move that cell"]),
    "report-cells-of-differently-trained-models": (["report", f"{T}/runs/mixed-models"],
                                                   ["differently trained resnet8-rce", "steps"]),
}


def test_the_table_covers_every_sub_command_with_at_least_40_cases():
    commands = {argv[0] for argv, _ in CASES.values()}
    assert commands == {"train", "eval", "detect", "attack", "threat-models", "reproduce", "report", "demo"}
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, world, capsys, monkeypatch):
    argv, expected = CASES[name]
    if name == "train-cuda-absent" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(world)  # default output folders (runs/...) would land under the snapshot too
    before = _snapshot(world)
    code = main([a.replace(T, str(world)) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (name, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in err and out == "", (name, out, err)
    message = lines[0].replace(str(world), "{root}")
    for part in expected:
        assert part in message, (name, part, message)
    assert ": " in message[len("error: "):], (name, "no fix after the problem", message)
    assert _snapshot(world) == before, (name, "files were created or changed")


def test_the_guards_let_ordinary_inputs_through(tmp_path):
    """What the untrusted-file guards accept: a torch.save tensor (its pickle only rebuilds a tensor), a
    .safetensors file (one tensor, or the x_adv of `rcedetect attack`), a numeric .npy, a small PNG."""
    from PIL import Image

    from rcedetect.inputs import read_array

    x = torch.rand(2, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    assert np.array_equal(read_array(tmp_path / "x.pt"), x.numpy())
    from safetensors.torch import save_file

    save_file({"only": x}, str(tmp_path / "one.safetensors"))
    save_file({"x": x * 0, "x_adv": x, "labels": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "adv.safetensors"))
    assert np.array_equal(read_array(tmp_path / "one.safetensors"), x.numpy())
    assert np.array_equal(read_array(tmp_path / "adv.safetensors"), x.numpy())
    np.save(tmp_path / "x.npy", x.numpy())
    assert np.array_equal(read_array(tmp_path / "x.npy"), x.numpy())
    Image.fromarray((x[0, 0].numpy() * 255).astype(np.uint8), mode="L").save(tmp_path / "x.png")
    assert read_array(tmp_path / "x.png").shape == (1, 1, 28, 28)
