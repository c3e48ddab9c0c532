"""C&W-wb results do not depend on how the images are batched: `run_cw_wb` and `rcedetect attack
--attack cw-wb` give the same examples for batch sizes 1, 3 and all at once, and chunks attacked
separately with their global offsets (`start`) reproduce one run over the whole set.

Targets (and the attack bank) are identical; images and f2 values agree to float rounding only,
because a convolution over a batch of another size may round its last bit differently (measured:
|x_adv difference| <= 3e-7 on CPU), which Adam then carries along.

Budget: 1 binary step x 5 Adam iterations, a 10-point attack bank, 6 images (seconds)."""

import shutil

import pytest
import torch

from rcedetect.attacks import load_adversarial, random_targets
from rcedetect.attacks.cw_wb import CWWBResult
from rcedetect.cli import main
from rcedetect.detectors import KernelDensity, collect_outputs
from rcedetect.errors import InputError
from rcedetect.evaluation.threat_models import run_cw_wb

N = 6
START = 7000
BUDGET = {"binary_search_steps": 1, "max_iters": 5, "lr": 0.1, "initial_const": 1.0, "attack_bank_size": 10}


@pytest.fixture(scope="module")
def kd(tiny_models, data_dir):
    from rcedetect.data import load_dataset

    train = load_dataset("mnist", "train", data_dir)
    kd = KernelDensity.for_objective("ce", n_per_class=30, seed=0)
    index = kd.subset_indices(train.labels, 10)
    return kd.fit(collect_outputs(tiny_models["ce"], train.images[index]), train.labels[index])


@pytest.fixture(scope="module")
def images(mnist_test):
    return mnist_test.float_images(slice(START, START + N)), mnist_test.labels[START:START + N].clone()


def _assert_same(a: dict, b: dict) -> None:
    """Integer and boolean tensors equal; float tensors equal up to float rounding."""
    assert a.keys() == b.keys()
    for name, left in a.items():
        right = b[name]
        if left.is_floating_point():
            torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(left, right), name


def test_run_cw_wb_is_batch_size_independent(tiny_models, kd, images):
    model = tiny_models["ce"]
    x, y = images
    whole = run_cw_wb(model, kd, x, y, seed=3, start=START, **BUDGET)
    # Targets are random_targets of the rows' global indices, so a caller's own draw agrees.
    assert torch.equal(whole.target, random_targets(y, 10, 3, start=START))
    for batch_size in (1, 3, N + 4):
        _assert_same(run_cw_wb(model, kd, x, y, seed=3, start=START, batch_size=batch_size, **BUDGET)._asdict(),
                     whole._asdict())
    # Chunk by chunk, each with its global offset (what a resumable pipeline does).
    parts = [run_cw_wb(model, kd, x[a:b], y[a:b], seed=3, start=START + a, **BUDGET) for a, b in ((0, 2), (2, N))]
    _assert_same(CWWBResult(*(torch.cat(f) for f in zip(*parts)))._asdict(), whole._asdict())


def test_run_cw_wb_refuses_unknown_settings(tiny_models, kd, images):
    x, y = images
    with pytest.raises(InputError, match="max_iter"):
        run_cw_wb(tiny_models["ce"], kd, x, y, max_iter=5)
    with pytest.raises(InputError, match="batch_size"):
        run_cw_wb(tiny_models["ce"], kd, x, y, batch_size=0, **BUDGET)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints, tmp_path_factory):
    """A copy of the tiny CE checkpoint, so the detector the CLI saves beside it stays private."""
    dest = tmp_path_factory.mktemp("batching") / "ce"
    dest.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(tiny_checkpoints["ce"] / name, dest / name)
    return dest


def test_cli_cw_wb_is_batch_size_independent(checkpoint, tmp_path):
    common = ["attack", str(checkpoint), "--attack", "cw-wb", "--n", str(N), "--start", str(START), "--seed", "2",
              "--binary-search-steps", "1", "--max-iters", "5", "--lr", "0.1", "--initial-const", "1",
              "--attack-bank-size", "10", "--n-per-class", "30", "--calibration-size", "300", "--no-progress",
              "--device", "cpu"]
    saved = {}
    for batch_size in (1, 3, N):
        out = tmp_path / f"b{batch_size}.safetensors"
        assert main([*common, "--batch-size", str(batch_size), "--out", str(out)]) == 0
        saved[batch_size], info = load_adversarial(out)
        assert info["batch_size"] == batch_size
    reference = saved[N]
    assert torch.equal(reference["targets"], random_targets(reference["labels"], 10, 2, start=START))
    for batch_size in (1, 3):
        _assert_same(saved[batch_size], reference)
