"""`rcedetect detect` (issue 3): input validation with one-line errors, fit-once-then-load, report mode."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rcedetect.cli import main
from rcedetect.cli.detect import load_input
from rcedetect.errors import InputError


def _load(path, **kwargs):
    return load_input(path, in_channels=1, image_size=28, dataset="mnist", **kwargs)


# ---------------------------------------------------------------------------------- input files
def test_accepted_inputs(tmp_path):
    g = np.random.default_rng(0)
    batch = g.random((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    assert torch.allclose(_load(tmp_path / "batch.npy"), torch.from_numpy(batch))
    np.save(tmp_path / "single.npy", batch[0, 0])  # (H, W)
    assert _load(tmp_path / "single.npy").shape == (1, 1, 28, 28)
    np.save(tmp_path / "nhw.npy", batch[:, 0])  # (N, H, W) grayscale batch
    assert _load(tmp_path / "nhw.npy").shape == (3, 1, 28, 28)
    np.save(tmp_path / "scaled.npy", batch * 255)
    assert torch.allclose(_load(tmp_path / "scaled.npy", pixel_scale=255), torch.from_numpy(batch), atol=1e-6)
    pixels = (batch[0, 0] * 255).astype(np.uint8)
    np.save(tmp_path / "u8.npy", pixels)  # integers are 0-255
    assert torch.allclose(_load(tmp_path / "u8.npy")[0, 0], torch.from_numpy(pixels / 255).float())
    Image.fromarray(pixels, mode="L").save(tmp_path / "digit.png")
    assert torch.allclose(_load(tmp_path / "digit.png")[0, 0], torch.from_numpy(pixels / 255).float())
    torch.save(torch.from_numpy(batch), tmp_path / "batch.pt")
    assert torch.allclose(_load(tmp_path / "batch.pt"), torch.from_numpy(batch))


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 3, 28, 28), np.float32), "3 channels, the mnist model expects 1"),
    (np.zeros((2, 28, 28, 1), np.float32), "channels-last"),
    (np.zeros((2, 1, 32, 32), np.float32), "32x32 pixels"),
    (np.zeros((5, 7), np.float32), "5x7 pixels"),
    (np.zeros(5, np.float32), "has shape"),
    (np.full((1, 1, 28, 28), np.nan, np.float32), "NaN"),
    (np.full((1, 1, 28, 28), 200.0, np.float32), "pass --pixel-scale 255"),
    (np.full((1, 1, 28, 28), -0.5, np.float32), "outside"),
    (np.zeros((0, 1, 28, 28), np.float32), "no images"),
])
def test_bad_arrays_give_one_line_errors(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InputError, match=message) as info:
        _load(tmp_path / "x.npy")
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="unsupported file type"):
        _load(tmp_path / "x.txt")
    with pytest.raises(InputError, match="does not exist"):
        _load(tmp_path / "missing.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="plain numeric"):
        _load(tmp_path / "obj.npy")
    torch.save({"x": torch.zeros(1, 1, 28, 28)}, tmp_path / "dict.pt")
    with pytest.raises(InputError, match="not a tensor"):
        _load(tmp_path / "dict.pt")
    Image.new("RGB", (28, 28)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="3 channels"):
        _load(tmp_path / "rgb.png")
    Image.new("RGBA", (28, 28)).save(tmp_path / "rgba.png")
    with pytest.raises(InputError, match="mode RGBA"):
        _load(tmp_path / "rgba.png")
    np.save(tmp_path / "big.npy", np.full((1, 1, 28, 28), 300.0))
    with pytest.raises(InputError, match=r"outside \[0, 255\]"):
        _load(tmp_path / "big.npy", pixel_scale=255)


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained) depth-8 MNIST checkpoint: the CLI mechanics do not depend on training."""
    from rcedetect.checkpoints import save_checkpoint
    from rcedetect.config import TrainConfig
    from rcedetect.models import resnet

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(directory, resnet(depth=8).eval(), TrainConfig(dataset="mnist", objective="rce", depth=8,
                                                                          steps=1))


SMALL = ["--calibration-size", "200", "--n-per-class", "10", "--batch-size", "200", "--device", "cpu"]


def test_detect_fits_once_then_loads(checkpoint, tmp_path, capsys, mnist_test):
    np.save(tmp_path / "x.npy", mnist_test.images[:5].numpy())
    args = ["detect", str(checkpoint), "--metric", "kd", "--input", str(tmp_path / "x.npy"), "--json", *SMALL]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(first["results"]) == 5 and first["metric"] == "kd"
    for row in first["results"]:
        assert row["accepted"] == (row["score"] > first["threshold"])
        assert row["prediction"] == (row["predicted_class"] if row["accepted"] else "NOT SURE")
    saved = json.loads((checkpoint / "detector-kd.json").read_text())
    assert saved["metric_params"]["bandwidth_sq"] == pytest.approx(0.1 / 0.26)  # RCE default
    assert saved["metadata"]["calibration"] == {"split": "test", "permutation_seed": 0, "start": 0, "stop": 200}
    stamp = (checkpoint / "detector-kd.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # loads: nothing rewritten, same answer
    assert json.loads(capsys.readouterr().out) == first
    assert (checkpoint / "detector-kd.safetensors").stat().st_mtime_ns == stamp
    # Another fpr moves the threshold from the stored calibration scores, still without refitting.
    assert main(args[:-len(SMALL)] + ["--fpr", "0.2", *SMALL]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] > first["threshold"]
    assert (checkpoint / "detector-kd.safetensors").stat().st_mtime_ns == stamp
    # Other fit settings refit (and say so); --refit always does.
    assert main(args[:-len(SMALL)] + [*SMALL[:2], "--n-per-class", "12", *SMALL[4:]]) == 0
    assert "refitting" in capsys.readouterr().err
    assert json.loads((checkpoint / "detector-kd.json").read_text())["metric_params"]["n_per_class"] == 12
    # Human-readable output: one line per input after a header.
    assert main(["detect", str(checkpoint), "--metric", "non-me", "--input", str(tmp_path / "x.npy"), *SMALL]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6


def test_detect_report(checkpoint, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["detect", str(checkpoint), "--report", "--output", str(out), *SMALL]) == 0
    report = json.loads(out.read_text())
    assert report["evaluation"] == {**report["evaluation"], "start": 200, "stop": 400}
    assert set(report["metrics"]) == {"confidence", "non-me", "kd"}
    for m in report["metrics"].values():
        assert m["calibration_rejection_rate"] <= 0.05
        assert m["n_evaluation"] == 200 and 0 <= m["rejection_rate"] <= 1
        q = list(m["evaluation_quantiles"].values())
        assert q == sorted(q)
    assert "rejected" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_error(checkpoint, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.full((1, 1, 28, 28), np.nan, np.float32))
    assert main(["detect", str(checkpoint), "--metric", "non-me", "--input", str(tmp_path / "bad.npy"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "NaN" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------ supervised baselines
@pytest.fixture(scope="module")
def trained_checkpoint(tiny_checkpoints, tmp_path_factory):
    """A copy of the suite's tiny trained RCE ResNet-8 (FGSM must fool some clean-correct inputs)."""
    import shutil

    directory = tmp_path_factory.mktemp("trained") / "rce"
    shutil.copytree(tiny_checkpoints["rce"], directory)
    return directory


BASELINE = ["--calibration-size", "200", "--n-per-class", "10", "--fit-n", "200", "--gaussian-n", "300",
            "--batch-size", "200", "--device", "cpu"]


@pytest.mark.parametrize("metric", ["lid", "mahalanobis-lr"])
def test_supervised_baseline_needs_its_fit_then_loads(trained_checkpoint, tmp_path, capsys, mnist_test, metric):
    np.save(tmp_path / "x.npy", mnist_test.images[:4].numpy())
    args = ["detect", str(trained_checkpoint), "--metric", metric, "--input", str(tmp_path / "x.npy"), "--json",
            *BASELINE]
    assert main(args) == 2  # no fitted state and no permission to craft adversarial examples
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--fit-adversarial" in err and len(err.splitlines()) == 1
    assert main(args + ["--fit-adversarial"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["metric"] == metric and len(first["results"]) == 4
    for row in first["results"]:
        assert row["accepted"] == (row["score"] > first["threshold"])
    saved = json.loads((trained_checkpoint / f"detector-{metric}.json").read_text())
    protocol = saved["metadata"]["protocol"]
    assert protocol["split"] == "train" and protocol["attack"] == "fgsm" and protocol["eps"] == 0.16
    assert protocol["n"] == 200 and 100 <= saved["metadata"]["fitting_examples"]["counted"] <= 200
    stamp = (trained_checkpoint / f"detector-{metric}.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # loads without --fit-adversarial: same answer, nothing rewritten
    assert json.loads(capsys.readouterr().out) == first
    assert (trained_checkpoint / f"detector-{metric}.safetensors").stat().st_mtime_ns == stamp
    # Other fitting settings do not silently reuse the saved detector, and never craft without permission.
    assert main(args + ["--fit-eps", "0.2"]) == 2
    assert "other settings" in capsys.readouterr().err
    # --report measures the held-out rejection rate of the saved detector.
    out = tmp_path / "report.json"
    assert main(["detect", str(trained_checkpoint), "--metric", metric, "--report", "--output", str(out),
                 *BASELINE]) == 0
    m = json.loads(out.read_text())["metrics"][metric]
    assert m["n_evaluation"] == 200 and m["calibration_rejection_rate"] <= 0.05


def test_unsupervised_mahalanobis_fits_like_kd(trained_checkpoint, tmp_path, capsys, mnist_test):
    np.save(tmp_path / "x.npy", mnist_test.images[:3].numpy())
    assert main(["detect", str(trained_checkpoint), "--metric", "mahalanobis", "--input", str(tmp_path / "x.npy"),
                 *BASELINE]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    saved = json.loads((trained_checkpoint / "detector-mahalanobis.json").read_text())
    assert saved["metric_params"] == {"n_per_class": 10, "seed": 0} and "protocol" not in saved["metadata"]
