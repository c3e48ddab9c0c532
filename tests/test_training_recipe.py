"""Training schedules and the held-out tuning split (issue 14): the quick CIFAR-10 recipe's
warm-up + linear decay, the paper's piecewise schedule untouched, configs written before the
choices existed still reading back as the paper's, and a `--holdout` run that never sees the test set."""

import json

import pytest
import torch

from rcedetect.checkpoints import SIDECAR_FILE
from rcedetect.config import PAPER_LR_VALUES, TrainConfig, preset_config
from rcedetect.errors import InputError, RceDetectError
from rcedetect.names import LRSchedule
from rcedetect.training import holdout_split, train


def test_warmup_linear_schedule_against_its_formula():
    c = preset_config("cifar10", "ce", "quick", steps=1000)
    assert c.lr_schedule == LRSchedule.WARMUP_LINEAR and c.warmup_steps == 150
    peak = c.lr_values[0]
    for step in range(c.steps):
        expected = peak * (step + 1) / 150 if step < 150 else peak * (1000 - step) / 850
        assert c.learning_rate(step) == pytest.approx(expected, rel=1e-12)
    assert max(c.learning_rate(s) for s in range(c.steps)) == pytest.approx(peak)
    assert c.learning_rate(c.steps - 1) == pytest.approx(peak / 850)  # reaches ~0 at the end


def test_paper_and_mnist_keep_the_piecewise_schedule():
    for dataset, preset in (("cifar10", "paper"), ("mnist", "quick"), ("mnist", "paper")):
        c = preset_config(dataset, "rce", preset)
        assert c.lr_schedule == LRSchedule.PIECEWISE and c.lr_values == PAPER_LR_VALUES
        values = [c.learning_rate(s) for s in (0, c.lr_boundaries[0] - 1, c.lr_boundaries[0], c.lr_boundaries[1],
                                               c.lr_boundaries[2])]
        assert values == [0.1, 0.1, 0.01, 0.001, 0.0001]
    assert preset_config("cifar10", "ce", "paper").weight_decay == 2e-4


def test_configs_without_the_new_keys_read_back_as_the_paper_schedule():
    old = preset_config("mnist", "ce", "quick", depth=8, steps=10).to_json_dict()
    for key in ("lr_schedule", "warmup_steps", "holdout"):
        old.pop(key)
    c = TrainConfig.from_dict(old)
    assert c.lr_schedule == LRSchedule.PIECEWISE and c.holdout == 0
    with pytest.raises(InputError, match="learning-rate schedule"):
        TrainConfig.from_dict({**old, "lr_schedule": "cosine"})


def test_holdout_split_is_fixed_disjoint_and_complete():
    trained, held = holdout_split(1000, 100)
    again_t, again_h = holdout_split(1000, 100)
    assert torch.equal(trained, again_t) and torch.equal(held, again_h)
    assert held.numel() == 100 and trained.numel() == 900
    assert sorted(torch.cat([trained, held]).tolist()) == list(range(1000))
    with pytest.raises(InputError, match="--holdout"):
        holdout_split(100, 100)
    with pytest.raises(RceDetectError, match="--holdout"):
        preset_config("mnist", "ce", "quick", holdout=-1)


def test_a_holdout_run_reports_the_held_out_error_and_never_trains_on_it(tmp_path, monkeypatch, data_dir):
    import rcedetect.training as training

    config = preset_config("mnist", "ce", "quick", depth=8, steps=4, holdout=20_000)
    _, held = holdout_split(60_000, 20_000)
    held_set = set(held.tolist())
    seen = []
    original = training.batch_indices

    def spy(cfg, step, n):
        assert n == 40_000
        index = original(cfg, step, n)
        seen.append(index)
        return index

    loaded = []
    original_load = training.load_dataset
    monkeypatch.setattr(training, "batch_indices", spy)
    monkeypatch.setattr(training, "load_dataset", lambda name, split, d=None: loaded.append(split) or
                        original_load(name, split, d))
    train(config, tmp_path / "m", progress=False, data_dir=data_dir)
    assert loaded == ["train"]  # the test set is never read
    trained_rows, _ = holdout_split(60_000, 20_000)
    used = {int(trained_rows[i]) for index in seen for i in index}
    assert used and not used & held_set
    metrics = json.loads((tmp_path / "m" / SIDECAR_FILE).read_text())["metrics"]
    assert "test_error" not in metrics and 0.0 <= metrics["holdout_error"] <= 1.0 and metrics["holdout"] == 20_000
