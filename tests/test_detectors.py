"""Detection metrics and detectors (issue 3) against independent float64 references:
numpy/scipy brute force and scikit-learn's KernelDensity."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp as np_logsumexp
from scipy.special import softmax as np_softmax
from sklearn.neighbors import KernelDensity as SkKernelDensity

from rcedetect.detectors import (METRICS, NOT_SURE, ConfidenceMetric, KernelDensity, NonMEMetric, SelectiveClassifier,
                                 ThresholdDetector, confidence, confidence_log_odds, default_bandwidth_sq,
                                 detector_paths, load_detector, non_me, save_detector, select_bandwidth,
                                 threshold_at_fpr)
from rcedetect.errors import CheckpointError, InputError
from rcedetect.models import ModelOutput, resnet


def _logits(n=64, num_classes=10, scale=3.0, seed=0, dtype=torch.float32):
    return torch.randn(n, num_classes, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


# ------------------------------------------------------------------------ float64 brute-force refs
def ref_confidence(logits: np.ndarray) -> np.ndarray:
    return np_softmax(logits.astype(np.float64), axis=1).max(axis=1)


def ref_non_me(logits: np.ndarray) -> np.ndarray:
    """Eq. (1) literally: normalise the non-maximal softmax entries, then -Σ p log p."""
    out = []
    for row in logits.astype(np.float64):
        p = np_softmax(row)
        rest = np.delete(p, np.argmax(p))
        rest = rest / rest.sum()
        out.append(-np.sum(rest * np.log(rest)))
    return np.array(out)


def ref_log_kd(queries: np.ndarray, bank: np.ndarray, sigma_sq: float) -> np.ndarray:
    """log( mean_i exp(-||q - z_i||² / σ²) ) with explicit float64 differences."""
    q, b = queries.astype(np.float64), bank.astype(np.float64)
    d2 = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np_logsumexp(-d2 / sigma_sq, axis=1) - np.log(b.shape[0])


def _clusters(num_classes=3, per_class=60, dim=8, seed=0, offset=0.0):
    g = np.random.default_rng(seed)
    centres = g.normal(0, 2.0, (num_classes, dim))
    y = np.repeat(np.arange(num_classes), per_class)
    x = centres[y] + g.normal(0, 1.0, (y.size, dim)) + offset
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


# ------------------------------------------------------------------------------- stateless metrics
def test_confidence_matches_float64_softmax():
    logits = _logits()
    np.testing.assert_allclose(confidence(logits).numpy(), ref_confidence(logits.numpy()), rtol=1e-6)
    # Also accepts a ModelOutput.
    out = ModelOutput(logits, torch.zeros(64, 4))
    assert torch.equal(confidence(out), confidence(logits))


def test_confidence_log_odds_is_monotone_log_odds_of_confidence():
    logits = _logits(scale=2.0)
    p = ref_confidence(logits.numpy())
    np.testing.assert_allclose(confidence_log_odds(logits).numpy(), np.log(p / (1 - p)), rtol=1e-5, atol=1e-5)
    # Resolves confidences that round to 1.0 in float32: margins of 30 and 40 give distinct scores.
    sharp = torch.tensor([[30.0, 0.0, 0.0], [40.0, 0.0, 0.0]])
    assert confidence(sharp)[0] == confidence(sharp)[1] == 1.0
    assert confidence_log_odds(sharp)[0] < confidence_log_odds(sharp)[1]


def test_non_me_matches_float64_eq1():
    logits = _logits(n=100, scale=2.0, seed=1)
    np.testing.assert_allclose(non_me(logits).numpy(), ref_non_me(logits.numpy()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_classes", [3, 10, 100])
def test_lemma1_maximum_exactly_on_equal_non_maximal_entries(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    n = 50
    top = torch.randint(0, num_classes, (n,), generator=g)
    # Equal non-maximal logits (any common value) and a larger maximal one: non-ME = log(L-1).
    equal = torch.randn(n, 1, generator=g).expand(n, num_classes).clone()
    equal[torch.arange(n), top] += 0.5 + torch.rand(n, generator=g) * 5
    assert torch.allclose(non_me(equal).double(), torch.full((n,), math.log(num_classes - 1), dtype=torch.float64),
                          atol=1e-6, rtol=0)
    # Any perturbation of the non-maximal entries lowers it strictly (checked in float64).
    unequal = equal.double().clone()
    unequal += torch.randn(n, num_classes, generator=g, dtype=torch.float64) * 0.1
    unequal[torch.arange(n), top] += 10  # keep the same argmax
    values = non_me(unequal)
    assert (values < math.log(num_classes - 1)).all()
    np.testing.assert_allclose(values.numpy(), ref_non_me(unequal.numpy()), rtol=1e-10)


def test_extreme_logits_stay_finite_and_correct():
    g = torch.Generator().manual_seed(3)
    signs = torch.randint(0, 2, (200, 10), generator=g).float() * 2 - 1
    extreme = signs * 1e4
    mixed = torch.cat([extreme, torch.randn(200, 10, generator=g) * 1e4])
    for metric in (confidence, confidence_log_odds, non_me):
        assert torch.isfinite(metric(mixed)).all(), metric.__name__
    values = non_me(mixed)
    assert (values >= 0).all() and (values <= math.log(9) + 1e-6).all()
    # Known cases: one winner and equal others -> log(L-1); one clear runner-up -> 0.
    case = torch.tensor([[1e4] + [-1e4] * 9, [1e4, 0.0] + [-1e4] * 8])
    np.testing.assert_allclose(non_me(case).numpy(), [math.log(9), 0.0], atol=1e-6)
    assert confidence(case)[0] == 1.0
    assert confidence_log_odds(case)[0].item() == pytest.approx(2e4 - math.log(9), rel=1e-6)
    # Ties at the maximum of all-equal ±1e4 rows: still finite.
    assert torch.isfinite(non_me(torch.full((2, 10), -1e4))).all()


def test_metrics_reject_bad_shapes():
    with pytest.raises(InputError, match="shape"):
        non_me(torch.zeros(5))
    with pytest.raises(InputError, match="L >= 2"):
        confidence(torch.zeros(5, 1))


# ------------------------------------------------------------------------------------ K-density
def test_kd_matches_sklearn_up_to_its_normalising_constant():
    bank_x, bank_y = _clusters(num_classes=3, per_class=60, dim=8, seed=0)
    queries, _ = _clusters(num_classes=3, per_class=10, dim=8, seed=1)
    logits = _logits(n=queries.shape[0], num_classes=3, seed=2)
    sigma_sq = 1 / 0.26
    kd = KernelDensity(sigma_sq, n_per_class=None).fit(bank_x, bank_y)
    ours = kd.log_density(ModelOutput(logits, queries)).numpy()
    predicted = logits.argmax(1).numpy()
    h = math.sqrt(sigma_sq / 2)
    const = 0.5 * 8 * math.log(2 * math.pi * h * h)  # log((2π h²)^{d/2})
    expected = np.empty(queries.shape[0])
    for c in range(3):
        sk = SkKernelDensity(kernel="gaussian", bandwidth=h).fit(bank_x[bank_y == c].double().numpy())
        rows = predicted == c
        expected[rows] = sk.score_samples(queries[rows].double().numpy()) + const
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    assert kd.log_normalizer(8) == pytest.approx(const)


def test_kd_uses_true_labels_for_banks_and_predicted_class_for_scoring():
    # Features encode their true label in coordinate 0: every bank must be label-pure.
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = torch.randn(400, 5, generator=g)
    x[:, 0] = y.float() * 100
    kd = KernelDensity(1.0, n_per_class=30, seed=7).fit(x, y)
    for c, part in enumerate(torch.split(kd.bank_, kd.bank_counts_.tolist())):
        assert part.shape[0] == 30 and (part[:, 0] == c * 100).all()
    queries = torch.randn(20, 5, generator=g)
    logits = _logits(n=20, num_classes=4, seed=5)
    by_prediction = kd.log_density(ModelOutput(logits, queries))
    assert torch.allclose(by_prediction, kd.log_density_for_class(queries, logits.argmax(1)))
    all_classes = kd.log_density_all(queries)
    assert torch.allclose(by_prediction, all_classes.gather(1, logits.argmax(1, keepdim=True)).squeeze(1))
    banks = torch.split(kd.bank_, kd.bank_counts_.tolist())
    for c in range(4):
        np.testing.assert_allclose(all_classes[:, c].numpy(), ref_log_kd(queries.numpy(), banks[c].numpy(), 1.0),
                                   rtol=1e-5)


def test_kd_subset_is_seeded():
    x, y = _clusters(num_classes=3, per_class=100, dim=4)
    a = KernelDensity(1.0, n_per_class=20, seed=1).fit(x, y).bank_
    b = KernelDensity(1.0, n_per_class=20, seed=1).fit(x, y).bank_
    c = KernelDensity(1.0, n_per_class=20, seed=2).fit(x, y).bank_
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert KernelDensity(1.0, n_per_class=None).fit(x, y).bank_.shape[0] == 300
    # Features of only the chosen rows give the same bank (what the CLI does).
    kd = KernelDensity(1.0, n_per_class=20, seed=1)
    index = kd.subset_indices(y)
    assert torch.equal(kd.fit(x[index], y[index]).bank_, a)


def test_kd_far_points_finite_and_float32_cancellation_controlled():
    # Features far from the origin: ||z||² ~ 6e6, distances ~ 1, the regime where the naive
    # ||q||²+||z||²-2q·z expansion in float32 loses everything.
    bank, y = _clusters(num_classes=2, per_class=50, dim=16, seed=3, offset=600.0)
    queries, _ = _clusters(num_classes=2, per_class=5, dim=16, seed=4, offset=600.0)
    sigma_sq = 0.1 / 0.26
    kd = KernelDensity(sigma_sq, n_per_class=None).fit(bank, y)
    classes = torch.tensor([0] * 5 + [1] * 5)
    ours = kd.log_density_for_class(queries, classes).numpy()
    banks = torch.split(kd.bank_, kd.bank_counts_.tolist())
    ref = np.r_[ref_log_kd(queries[:5].numpy(), banks[0].numpy(), sigma_sq),
                ref_log_kd(queries[5:].numpy(), banks[1].numpy(), sigma_sq)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    # A point 1e3 away: KD underflows to 0 but its log stays finite and exact.
    far = queries[:1] + 1e3
    value = kd.log_density_for_class(far, 0)
    assert torch.isfinite(value).all()
    np.testing.assert_allclose(value.numpy(), ref_log_kd(far.numpy(), banks[0].numpy(), sigma_sq), rtol=1e-5)


def test_kd_chunking_does_not_change_results():
    x, y = _clusters(num_classes=3, per_class=40, dim=6)
    q, _ = _clusters(num_classes=3, per_class=30, dim=6, seed=9)
    classes = torch.arange(90) % 3
    big = KernelDensity(2.0, n_per_class=None).fit(x, y).log_density_for_class(q, classes)
    small = KernelDensity(2.0, n_per_class=None, chunk_size=50).fit(x, y).log_density_for_class(q, classes)
    assert torch.allclose(big, small, rtol=1e-6)


def test_kd_autograd_path_equals_fast_path():
    x, y = _clusters(num_classes=3, per_class=40, dim=6)
    q, _ = _clusters(num_classes=3, per_class=30, dim=6, seed=9)
    kd = KernelDensity(0.5, n_per_class=None).fit(x, y)
    classes = torch.arange(90) % 3
    with torch.no_grad():
        fast = kd.log_density_for_class(q, classes)
    tracked = kd.log_density_for_class(q.clone().requires_grad_(), classes)
    assert tracked.requires_grad and torch.allclose(fast, tracked.detach(), rtol=1e-6)


def test_default_bandwidths_and_registry():
    assert default_bandwidth_sq("ce") == pytest.approx(1 / 0.26)
    assert default_bandwidth_sq("rce") == pytest.approx(0.1 / 0.26)
    assert METRICS["kd"]("rce").bandwidth_sq == pytest.approx(0.1 / 0.26)
    assert METRICS["kd"]("ce", bandwidth_sq=2.0, n_per_class=10).n_per_class == 10
    assert isinstance(METRICS["confidence"]("ce"), ConfidenceMetric)
    assert isinstance(METRICS["non-me"]("rce"), NonMEMetric)
    with pytest.raises(InputError, match="objective"):
        default_bandwidth_sq("mse")


def test_select_bandwidth_criteria_match_sklearn_and_auc():
    x, y = _clusters(num_classes=2, per_class=80, dim=4, seed=0)
    val_x, val_y = _clusters(num_classes=2, per_class=40, dim=4, seed=1)
    val = ModelOutput(torch.nn.functional.one_hot(val_y, 2).float() * 5, val_x)
    candidates = (0.5, 2.0, 8.0)
    best, table = select_bandwidth(ModelOutput(torch.zeros(160, 2), x), y, val, val_y,
                                   candidates=candidates, n_per_class=None)
    for bw in candidates:  # held-out log-likelihood of a normalised Gaussian KDE with h² = σ²/2
        ll = np.concatenate([
            SkKernelDensity(bandwidth=math.sqrt(bw / 2)).fit(x[y == c].double().numpy())
            .score_samples(val_x[val_y == c].double().numpy()) for c in range(2)])
        assert table[bw] == pytest.approx(ll.mean(), rel=1e-5)
    assert best == max(table, key=table.get)
    # AUC criterion: adversarial features shifted away from the clusters.
    adv = ModelOutput(val.logits, val_x + 3.0)
    best_auc, auc_table = select_bandwidth(ModelOutput(torch.zeros(160, 2), x), y, val, candidates=candidates,
                                           adversarial_output=adv, n_per_class=None)
    assert all(0.5 < v <= 1.0 for v in auc_table.values()) and best_auc in candidates


# ------------------------------------------------------------------------------------- gradients
def test_gradcheck_all_metrics_float64():
    logits = _logits(n=6, num_classes=5, scale=2.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(confidence, (logits,))
    assert torch.autograd.gradcheck(confidence_log_odds, (logits,))
    assert torch.autograd.gradcheck(non_me, (logits,))
    x, y = _clusters(num_classes=3, per_class=20, dim=4)
    kd = KernelDensity(2.0, n_per_class=None).fit(x.double(), y)
    feats = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda f: kd.log_density_for_class(f, classes), (feats,))


def test_gradients_flow_from_inputs_through_a_resnet():
    torch.manual_seed(0)
    model = resnet(depth=8).eval()
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    with torch.no_grad():
        train = model.forward_features(torch.rand(30, 1, 28, 28))
    kd = KernelDensity(0.1 / 0.26, n_per_class=None).fit(train, torch.arange(30) % 10)
    for score in (confidence, non_me, kd.log_density):
        x.grad = None
        score(model.forward_features(x)).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, score


# -------------------------------------------------------------------------------------- threshold
def _brute_force_best_rejections(scores: np.ndarray, k: int) -> int:
    """Largest number of scores a threshold rule 'reject score <= T' can reject without exceeding k."""
    counts = [(scores <= t).sum() for t in np.unique(scores)] + [0]
    return max(c for c in counts if c <= k)


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.5])
def test_threshold_at_fpr_rejects_at_most_and_as_many_as_possible(fpr):
    g = np.random.default_rng(0)
    distinct = g.normal(size=5000).astype(np.float32)
    tied = np.round(g.normal(size=5000), 1).astype(np.float32)  # heavy ties
    for scores in (distinct, tied):
        t = threshold_at_fpr(torch.from_numpy(scores), fpr)
        rejected = int((torch.from_numpy(scores) <= t).sum())
        k = int(np.floor(fpr * scores.size + 1e-9))
        assert rejected == _brute_force_best_rejections(scores, k)
    assert int((torch.from_numpy(distinct) <= threshold_at_fpr(distinct, fpr)).sum()) == round(fpr * 5000)


def test_threshold_detector_sklearn_conventions_and_held_out_fpr():
    calib = _logits(n=5000, scale=3.0, seed=10)
    held_out = _logits(n=20000, scale=3.0, seed=11)
    det = ThresholdDetector(NonMEMetric(), fpr=0.05)
    assert det.fit(calib) is det
    assert det.fpr_ == 0.05 and det.calibration_scores_.shape == (5000,)
    scores = det.score_samples(held_out)
    assert torch.equal(det.decision_function(held_out), scores - det.threshold_)
    pred = det.predict(held_out)
    assert set(pred.unique().tolist()) == {-1, 1}
    assert torch.equal(pred == 1, det.decision_function(held_out) > 0)
    assert (det.predict(calib) == -1).sum() == 250
    # i.i.d. held-out data: rejection rate within 4 binomial standard errors (~0.6 pp) of 5 %.
    rate = (pred == -1).double().mean().item()
    assert abs(rate - 0.05) < 4 * math.sqrt(0.05 * 0.95 / 20000) + 1 / 5000
    # Another fpr from the stored calibration scores, without refitting.
    assert (det.recalibrate(0.1).predict(calib) == -1).sum() == 500
    # Explicit threshold.
    fixed = ThresholdDetector(ConfidenceMetric(), threshold=0.0).fit()
    assert fixed.threshold_ == 0.0
    assert torch.equal(fixed.predict(held_out) == 1, confidence(held_out) > 0.5)


def test_threshold_detector_errors():
    with pytest.raises(InputError, match="not fitted"):
        ThresholdDetector(NonMEMetric()).predict(_logits())
    with pytest.raises(InputError, match="fitted"):
        ThresholdDetector(KernelDensity(1.0)).fit(ModelOutput(_logits(), torch.zeros(64, 3)))
    with pytest.raises(InputError, match="fpr"):
        ThresholdDetector(NonMEMetric(), fpr=1.5)


def test_kd_detector_fits_bank_on_train_and_threshold_on_calibration():
    x, y = _clusters(num_classes=3, per_class=100, dim=6)
    train = ModelOutput(torch.nn.functional.one_hot(y, 3).float(), x)
    cx, cy = _clusters(num_classes=3, per_class=100, dim=6, seed=5)
    calib = ModelOutput(torch.nn.functional.one_hot(cy, 3).float(), cx)
    det = ThresholdDetector(KernelDensity(1.0, n_per_class=50), fpr=0.1).fit(train, y, calibration=calib)
    assert det.metric_.bank_.shape[0] == 150
    assert (det.predict(calib) == -1).sum() == 30
    expected = np.sort(det.metric_.log_density(calib).numpy())[29]
    assert det.threshold_ == float(expected)


def test_threshold_detector_never_changes_its_parameters_or_the_metric():
    x, y = _clusters(num_classes=3, per_class=100, dim=6)
    train = ModelOutput(torch.nn.functional.one_hot(y, 3).float(), x)
    calib = ModelOutput(torch.nn.functional.one_hot(y, 3).float(), _clusters(3, 100, 6, seed=5)[0])
    metric = KernelDensity(1.0, n_per_class=50)
    det = ThresholdDetector(metric, fpr=0.1)
    params = det.get_params()
    assert params == {"metric": metric, "fpr": 0.1, "threshold": None}
    det.fit(train, y, calibration=calib)
    assert not hasattr(metric, "bank_"), "fit must fit a copy, not the metric passed in"
    assert det.metric is metric and det.metric_ is not metric and hasattr(det.metric_, "bank_")
    first = det.threshold_
    assert det.recalibrate(0.2) is det
    assert det.get_params() == params and det.fpr == 0.1  # the constructor parameter is untouched
    assert det.fpr_ == 0.2 and det.threshold_ > first
    assert det.calibrate(calib).fpr_ == 0.1 and det.threshold_ == first  # back at the constructor's fpr
    # A pre-fitted metric is used as given by calibrate (and still not modified).
    fitted = KernelDensity(1.0, n_per_class=50).fit(train, y)
    bank = fitted.bank_.clone()
    other = ThresholdDetector(fitted, fpr=0.1).calibrate(calib)
    assert other.metric_ is fitted and torch.equal(fitted.bank_, bank) and other.threshold_ == first
    # scikit-learn's set_params: known names only.
    assert det.set_params(fpr=0.3).fpr == 0.3
    with pytest.raises(InputError, match="no parameter"):
        det.set_params(fpr_=0.3)


def test_metric_factories_refuse_unknown_settings():
    with pytest.raises(InputError, match="bandwidth_sq, n_per_class, seed, chunk_size"):
        METRICS["kd"]("ce", bandwith_sq=1.0)
    with pytest.raises(InputError, match="no settings|none"):
        METRICS["confidence"]("ce", n_per_class=10)
    with pytest.raises(InputError, match="lid"):
        METRICS["lid"]("ce", neighbours=20)
    assert set(METRICS) == {"confidence", "non-me", "kd", "lid", "mahalanobis", "mahalanobis-lr"} and "kd" in METRICS


# ------------------------------------------------------------------------------------- selective
def test_selective_classifier_returns_not_sure_for_rejected():
    torch.manual_seed(0)
    model = resnet(depth=8).train()  # mode must be restored afterwards
    x = torch.rand(40, 1, 28, 28)
    with torch.no_grad():
        model.eval()
        out = model.forward_features(x)
        model.train()
    det = ThresholdDetector(NonMEMetric(), fpr=0.3).fit(out)
    labels = SelectiveClassifier(model, det, batch_size=16).predict(x)
    assert model.training
    expected = torch.where(non_me(out) > det.threshold_, out.logits.argmax(1), NOT_SURE)
    assert torch.equal(labels, expected)
    assert (labels == NOT_SURE).sum() == 12 and NOT_SURE == -1


# ------------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("name", ["confidence", "non-me", "kd"])
def test_save_load_round_trip(tmp_path, name):
    x, y = _clusters(num_classes=3, per_class=50, dim=6)
    train = ModelOutput(_logits(n=150, num_classes=3, seed=1), x)
    calib = ModelOutput(_logits(n=150, num_classes=3, seed=2), _clusters(3, 50, 6, seed=3)[0])
    det = ThresholdDetector(METRICS[name]("rce", **({"n_per_class": 20} if name == "kd" else {})), fpr=0.05)
    det.fit(train, y, calibration=calib)
    save_detector(det, tmp_path, metadata={"note": "test"})
    loaded, metadata = load_detector(tmp_path, name)
    assert metadata == {"note": "test"}
    assert loaded.threshold_ == det.threshold_ and loaded.fpr_ == det.fpr_
    assert torch.equal(loaded.score_samples(calib), det.score_samples(calib))
    assert torch.equal(loaded.calibration_scores_, det.calibration_scores_)
    assert loaded.metric.params() == det.metric.params()
    # Tampering with the tensors is caught.
    _, tensor_path = detector_paths(tmp_path, name)
    tensor_path.write_bytes(tensor_path.read_bytes() + b" ")
    with pytest.raises(CheckpointError, match="refit"):
        load_detector(tmp_path, name)


def test_load_missing_detector(tmp_path):
    with pytest.raises(CheckpointError, match="no saved"):
        load_detector(tmp_path, "kd")
