"""Evaluation helpers (issue 3) against brute-force references."""

import numpy as np
import pytest
import torch

from rcedetect.detectors import threshold_at_fpr
from rcedetect.errors import InputError
from rcedetect.evaluation import (auc_score, counting_mask, detection_report, distortion, mean_distortion,
                                  rejection_rate, robust_accuracy_with_rejection, roc_curve, tpr_at_fpr)


def brute_force_auc(clean, adv) -> float:
    """P(clean score > adversarial score) + 0.5 P(equal), over all pairs."""
    clean, adv = np.asarray(clean, np.float64), np.asarray(adv, np.float64)
    greater = (clean[:, None] > adv[None, :]).sum()
    ties = (clean[:, None] == adv[None, :]).sum()
    return (greater + 0.5 * ties) / (clean.size * adv.size)


def test_auc_matches_pairwise_brute_force_with_ties():
    g = np.random.default_rng(0)
    clean = np.round(g.normal(1.0, 1.0, 300), 1)  # rounding creates ties
    adv = np.round(g.normal(0.0, 1.0, 200), 1)
    assert auc_score(clean, adv) == pytest.approx(brute_force_auc(clean, adv), abs=1e-12)
    assert auc_score(torch.tensor(clean), torch.tensor(adv)) == pytest.approx(brute_force_auc(clean, adv), abs=1e-12)


def test_roc_convention_normal_is_positive_higher_is_normal():
    clean, adv = np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0])
    assert auc_score(clean, adv) == 1.0 and auc_score(adv, clean) == 0.0
    fpr, tpr, thresholds = roc_curve(clean, adv)
    # At each threshold: tpr = clean accepted (score >= t), fpr = adversarial accepted.
    for f, t, thr in zip(fpr, tpr, thresholds):
        assert t == pytest.approx(np.mean(clean >= thr)) and f == pytest.approx(np.mean(adv >= thr))


def test_counting_mask():
    labels = np.array([0, 1, 2, 3, 4])
    clean = np.array([0, 1, 9, 3, 4])    # third clean input misclassified
    adv = np.array([5, 1, 7, 8, 6])      # second attack failed
    assert counting_mask(labels, clean, adv).tolist() == [True, False, False, True, True]
    with pytest.raises(InputError, match="length"):
        counting_mask(labels, clean[:3], adv)


def test_tpr_at_fpr_matches_brute_force():
    g = np.random.default_rng(1)
    clean = g.normal(1.0, 1.0, 1000).astype(np.float32)
    adv = g.normal(-1.0, 1.0, 700).astype(np.float32)
    # Brute force: the largest threshold among the clean scores rejecting at most 5 % of them.
    candidates = [t for t in np.sort(clean) if np.mean(clean <= t) <= 0.05]
    t = max(candidates)
    assert tpr_at_fpr(clean, adv, 0.05) == pytest.approx(np.mean(adv <= t))
    assert threshold_at_fpr(clean, 0.05) == t


def test_robust_accuracy_with_rejection_brute_force():
    g = np.random.default_rng(2)
    labels = g.integers(0, 10, 500)
    preds = np.where(g.random(500) < 0.3, labels, g.integers(0, 10, 500))
    scores = g.normal(size=500)
    threshold = 0.2
    expected = np.mean([(s <= threshold) or (p == y) for y, p, s in zip(labels, preds, scores)])
    assert robust_accuracy_with_rejection(labels, preds, scores, threshold) == pytest.approx(expected)
    assert rejection_rate(scores, threshold) == pytest.approx(np.mean(scores <= threshold))


def test_detection_report_applies_mask_to_both_sides():
    g = np.random.default_rng(3)
    clean, adv = g.normal(1, 1, 400), g.normal(0, 1, 400)
    mask = g.random(400) < 0.5
    report = detection_report(clean, adv, mask=mask, fpr=0.05)
    assert report["n"] == mask.sum()
    assert report["auc"] == pytest.approx(brute_force_auc(clean[mask], adv[mask]))
    assert report["tpr_at_fpr"] == tpr_at_fpr(clean[mask], adv[mask], 0.05)


def test_nan_scores_rejected():
    with pytest.raises(InputError, match="NaN"):
        auc_score(np.array([1.0, np.nan]), np.array([0.0]))


def test_distortion_on_0_255_scale():
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    x_adv = x.clone()
    x_adv[0] += 1 / 255          # every pixel off by one grey level -> distortion 1
    x_adv[1, 0, 0, 0] += 64 / 255  # one pixel off by 64 -> sqrt(64² / 192)
    d = distortion(x_adv, x)
    expected = [np.sqrt(np.mean(((a - b).numpy() * 255) ** 2)) for a, b in zip(x_adv, x)]
    np.testing.assert_allclose(d, expected, rtol=1e-12)
    assert d[0] == pytest.approx(1.0) and d[1] == pytest.approx(64 / np.sqrt(192))
    assert mean_distortion(x_adv, x, mask=torch.tensor([True, True, False, False, False, False])) == \
        pytest.approx((1.0 + 64 / np.sqrt(192)) / 2)
    with pytest.raises(InputError, match="shape"):
        distortion(x_adv[:, :1], x)
