"""The worst-case adaptive evaluation (issue 16): every formulation breaks a deliberately weak detector,
the worst case is never better for the defender than any single formulation (per example), the
gradient-masking checks fire on a detector whose score passes through a rounding step and on
hand-made results, and Tramèr's claim check looks up its reference and flags a result that beats it.

Budgets are tiny (the suite's depth-8 models, a few images, a few steps): behaviour, not numbers."""

import numpy as np
import pytest
import torch

from rcedetect.attacks.adaptive_pgd import _random_start, detector_aware_pgd
from rcedetect.attacks.cw_wb import cw_l2_detector
from rcedetect.detectors import ConfidenceMetric, ThresholdDetector, collect_outputs
from rcedetect.detectors.metrics import confidence_log_odds
from rcedetect.errors import InputError
from rcedetect.evaluation.published_robustness import PUBLISHED, published_at, tramer_check
from rcedetect.evaluation.worst_case import (FAIL, NATURAL_START, PASS, WorstCaseBudget, natural_starts,
                                             summarize_worst_case, sum_label, worst_case_evaluation,
                                             worst_case_examples)
from rcedetect.names import Formulation, Norm

TINY_CW = {"binary_search_steps": 1, "max_iters": 40, "lr": 0.1, "initial_const": 10.0}


@pytest.fixture(scope="module")
def batch(mnist_test):
    return mnist_test.float_images(slice(5000, 5012)), mnist_test.labels[5000:5012].clone()


@pytest.fixture(scope="module")
def calibration(tiny_models, mnist_test):
    return collect_outputs(tiny_models["ce"], mnist_test.images[:500])


@pytest.fixture(scope="module")
def weak_detector():
    """Confidence with a threshold so low that it rejects only hopeless inputs: easy to evade."""
    return ThresholdDetector(ConfidenceMetric(), threshold=-6.0).fit()


@pytest.fixture(scope="module")
def fpr_detector(calibration):
    return ThresholdDetector(ConfidenceMetric(), fpr=0.05).fit(calibration=calibration)


class RoundedConfidence(ConfidenceMetric):
    """A gradient-masked detector: the confidence log-odds through a rounding step (zero gradient)."""

    def score(self, model_output):
        return torch.round(confidence_log_odds(model_output))


def _budget(**over):
    base = {"eps": {"linf": (0.0, 0.1, 0.3), "l2": (0.0, 5.0)}, "steps": 10, "restarts": 2, "lambdas": (1.0,),
            "cw": TINY_CW, "large_eps": 1.0}
    return WorstCaseBudget(**{**base, **over})


@pytest.fixture(scope="module")
def weak_run(tiny_models, weak_detector, batch):
    x, y = batch
    budget = _budget()
    return budget, worst_case_examples(tiny_models["ce"], {"confidence": weak_detector}, x, y, budget=budget, seed=0)


def test_every_formulation_breaks_a_weak_detector(weak_run):
    budget, t = weak_run
    summary = summarize_worst_case(t, budget=budget, thresholds={"confidence": -6.0})
    by = summary["detectors"]["confidence"]["by_attack"]
    labels = [label for label, _, _ in budget.attacks]
    assert set(labels) == {"cw-l2", "logit", "selective", "orthogonal", sum_label(1.0), NATURAL_START}
    # Each attack alone breaks most inputs at the largest radius (robust accuracy with rejection <= 0.4;
    # the orthogonal rule is the weakest on confidence, whose two gradients are nearly parallel).
    for label in labels:
        assert by["l2"][label][-1] <= 0.4, (label, by["l2"][label])
        if label != "cw-l2":  # C&W-L2 minimises L2: its points lie far outside the L-inf 0.3 ball
            assert by["linf"][label][-1] <= 0.4, (label, by["linf"][label])


def test_worst_case_is_never_better_for_the_defender_than_any_single_attack(weak_run, fpr_detector, tiny_models, batch):
    budget, t = weak_run
    for norm in budget.eps:
        broken = t[f"confidence.broken.{norm}"].bool()
        first = t[f"confidence.first.{norm}"]
        for i, (label, _, _) in enumerate(budget.attacks):
            by = t[f"confidence.by.{norm}.{label}"].bool()
            assert bool((broken | ~by).all()), label  # broken by this attack => broken in the worst case
            assert bool((first[by] <= i).all())      # and attributed to it or an earlier one
        assert torch.equal(broken, first >= 0)
    summary = summarize_worst_case(t, budget=budget, thresholds={"confidence": -6.0})
    entry = summary["detectors"]["confidence"]
    for norm in budget.eps:
        worst = np.asarray(entry["robust_accuracy_with_rejection"][norm])
        for curve in entry["by_attack"][norm].values():
            assert np.all(worst <= np.asarray(curve) + 1e-12)
        assert np.all(np.diff(worst) <= 1e-12)  # running minimum over nested balls
    # The worst-case points re-checked: an input broken by C&W-L2 is misclassified and accepted there.
    x, y = batch
    cw = cw_l2_detector(tiny_models["ce"], x, y, fpr_detector, **TINY_CW)
    with torch.no_grad():
        out = tiny_models["ce"].forward_features(cw.x_adv)
    assert torch.equal(cw.success, cw.success & (out.logits.argmax(1) != y) & fpr_detector.accept(out))
    assert bool(torch.isfinite(cw.l2[cw.success]).all()) and bool(torch.isinf(cw.l2[~cw.success]).all())


def test_the_evaluation_is_deterministic_under_a_seed(tiny_models, fpr_detector, batch):
    x, y = batch
    budget = _budget(eps={"linf": (0.0, 0.1)}, formulations=("logit", "sum"), restarts=1, steps=5, large_eps=None)
    a = worst_case_examples(tiny_models["ce"], {"confidence": fpr_detector}, x, y, budget=budget, seed=3)
    b = worst_case_examples(tiny_models["ce"], {"confidence": fpr_detector}, x, y, budget=budget, seed=3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cascade_attacks_only_what_the_earlier_attacks_left(tiny_models, fpr_detector, batch):
    x, y = batch
    kw = {"eps": {"linf": (0.0, 0.1, 0.3)}, "formulations": ("cw-l2", "logit"), "restarts": 1, "large_eps": None,
          "check_steps": False, "cascade": True, "natural_start": False}
    budget = _budget(**kw)
    t = worst_case_examples(tiny_models["ce"], {"c": fpr_detector}, x, y, budget=budget, seed=0)
    cw, logit = t["c.by.linf.cw-l2"].bool(), t["c.by.linf.logit"].bool()
    assert not bool((cw & logit).any())  # inputs C&W-L2 (always first) broke are not attacked again
    assert torch.equal(t["c.broken.linf"].bool(), cw | logit)
    summary = summarize_worst_case(t, budget=budget, thresholds={"c": fpr_detector.threshold_})
    assert summary["detectors"]["c"]["by_attack"]["linf"] is None  # no per-attack curves under a cascade


def test_the_checks_fire_on_a_rounding_detector(tiny_models, calibration, batch):
    x, y = batch
    masked = ThresholdDetector(RoundedConfidence(), fpr=0.05).fit(calibration=calibration)
    budget = _budget(eps={"linf": (0.0, 0.1)}, formulations=("logit",), restarts=1, steps=5, large_eps=None,
                     check_steps=False)
    result = worst_case_evaluation(tiny_models["ce"], {"rounded": masked}, x, y, budget=budget)
    check = result["detectors"]["rounded"]["checks"]["gradient"]
    assert check["status"] == FAIL and check["value"] == 1.0
    honest = ThresholdDetector(ConfidenceMetric(), fpr=0.05).fit(calibration=calibration)
    result = worst_case_evaluation(tiny_models["ce"], {"honest": honest}, x, y, budget=budget)
    assert result["detectors"]["honest"]["checks"]["gradient"]["status"] == PASS


def _hand_made(n=10):
    """Per-example tensors of one detector `d` on a 3-radius L-inf grid, everything robust."""
    budget = WorstCaseBudget(eps={"linf": (0.0, 0.1, 0.2)}, formulations=("logit",), steps=4, restarts=3,
                             large_eps=1.0, natural_start=False)
    z = lambda *shape: torch.zeros(*shape, dtype=torch.long)  # noqa: E731
    t = {"correct": torch.ones(n, dtype=torch.long), "undefended.linf": z(n, 3), "d.accepted": torch.ones(n, dtype=torch.long),
         "d.grad_bad": z(n), "d.broken.linf": z(n, 3), "d.first.linf": z(n, 3) - 1, "d.by.linf.logit": z(n, 3),
         "d.restart.linf": z(n, 3) - 1, "d.transfer.linf": z(n, 3), "d.half.linf": z(n), "d.large": torch.ones(n, dtype=torch.long)}
    return budget, t


def _break(t, rows, col, restart=1):
    t["d.broken.linf"][rows, col] = 1
    t["d.first.linf"][rows, col] = 0
    t["d.by.linf.logit"][rows, col] = 1
    t["d.restart.linf"][rows, col] = restart


def test_the_checks_fire_on_hand_made_results():
    budget, t = _hand_made()
    checks = summarize_worst_case(t, budget=budget, thresholds={"d": 0.0})["detectors"]["d"]["checks"]
    assert all(c["status"] == PASS for c in checks.values()), checks

    budget, t = _hand_made()
    _break(t, [0, 1, 2], 1)  # broken at eps 0.1 but not at the larger 0.2: non-monotone in eps
    entry = summarize_worst_case(t, budget=budget, thresholds={"d": 0.0})["detectors"]["d"]
    assert entry["checks"]["eps.linf"]["status"] == FAIL
    assert entry["robust_accuracy_with_rejection"]["linf"] == pytest.approx([1.0, 0.7, 0.7])  # nested balls

    budget, t = _hand_made()
    t["d.transfer.linf"][:4, 2] = 1  # the detector-oblivious transfer attack beats the white-box one
    t["d.half.linf"][:3] = 1         # half the steps break 3 inputs the full attack did not (check eps 0.2)
    t["d.large"][:5] = 0             # 50 % at the whole-box radius
    t["d.grad_bad"][0] = 1
    checks = summarize_worst_case(t, budget=budget, thresholds={"d": 0.0})["detectors"]["d"]["checks"]
    for name in ("transfer.linf", "steps.linf", "large_eps", "gradient"):
        assert checks[name]["status"] == FAIL, name
    assert checks["gradient"]["value"] == pytest.approx(0.1)

    budget, t = _hand_made()
    _break(t, [0, 1], 2, restart=3)  # the third restart still broke 2 inputs (check eps 0.2): non-increasing
    entry = summarize_worst_case(t, budget=budget, thresholds={"d": 0.0})["detectors"]["d"]
    assert entry["restart_curve"]["linf"]["robust_accuracy"] == pytest.approx([1.0, 1.0, 0.8])
    assert entry["checks"]["restarts.linf"]["status"] == PASS


def test_minimum_distortion_is_the_smallest_radius_or_cw_distance():
    budget, t = _hand_made(4)
    _break(t, [0], 1)
    _break(t, [0, 1], 2)
    t["d.cw_l2"] = torch.tensor([np.inf, np.inf, np.inf, np.inf], dtype=torch.float64)
    t["d.cw_linf"] = torch.tensor([0.05, np.inf, np.inf, 0.15], dtype=torch.float64)
    entry = summarize_worst_case(t, budget=budget, thresholds={"d": 0.0})["detectors"]["d"]
    assert entry["per_example"]["min_distortion"]["linf"] == [0.05, 0.2, None, 0.15]
    assert entry["min_distortion"]["linf"]["median"] == pytest.approx(0.175)
    assert entry["min_distortion"]["linf"]["broken_fraction"] == 0.75


def test_tramer_lookup_and_flag():
    ref = published_at("cifar10", "linf", 8 / 255)
    assert ref is not None and ref.robust_accuracy == 75.28 and "RobustBench" in ref.source
    flagged = tramer_check("cifar10", "linf", 16 / 255, 0.80)
    assert flagged["implied_eps"] == pytest.approx(8 / 255) and flagged["implausible"] is True
    assert flagged["published"]["robust_accuracy"] == pytest.approx(0.7528)
    assert tramer_check("cifar10", "linf", 16 / 255, 0.50)["implausible"] is False
    assert tramer_check("cifar10", "linf", 0.04, 0.99) == {"implied_eps": 0.02, "implied_robust_accuracy": 0.99,
                                                           "published": None, "implausible": None}
    assert tramer_check("mnist", "l2", 4.0, 0.9)["published"] is None  # no verified MNIST L2 figure
    assert tramer_check("mnist", "linf", 0.8, 0.97)["implausible"] is True  # beats 96.34 % at 0.3 <= 0.4
    assert all(p.source for p in PUBLISHED)
    # A hand-made worst-case result carries the check beside every radius.
    budget = WorstCaseBudget(eps={"linf": (0.0, 16 / 255)}, formulations=("logit",), restarts=1, large_eps=None,
                             natural_start=False)
    t = {"correct": torch.ones(4, dtype=torch.long), "undefended.linf": torch.zeros(4, 2, dtype=torch.long),
         "d.accepted": torch.ones(4, dtype=torch.long), "d.grad_bad": torch.zeros(4, dtype=torch.long),
         "d.broken.linf": torch.zeros(4, 2, dtype=torch.long), "d.first.linf": torch.full((4, 2), -1),
         "d.by.linf.logit": torch.zeros(4, 2, dtype=torch.long), "d.restart.linf": torch.full((4, 2), -1),
         "d.transfer.linf": torch.zeros(4, 2, dtype=torch.long)}
    entry = summarize_worst_case(t, budget=budget, thresholds={"d": 0.0}, dataset="cifar10")["detectors"]["d"]
    assert entry["tramer"]["linf"][0] is None and entry["tramer"]["linf"][1]["implausible"] is True


def test_pgd_sum_rule_and_restart_index(tiny_models, weak_detector, batch):
    x, y = batch
    res = detector_aware_pgd(tiny_models["ce"], x, y, weak_detector, eps=0.3, steps=10, restarts=3, method="sum",
                             lam=1.0, seed=0)
    assert res.success.float().mean() >= 0.75
    assert bool((res.restart[res.success] >= 0).all()) and bool((res.restart[~res.success] == -1).all())
    assert int(res.restart.max()) <= 3


def test_budget_refuses_bad_settings():
    with pytest.raises(InputError, match="increasing"):
        WorstCaseBudget(eps={"linf": (0.2, 0.1)})
    with pytest.raises(InputError, match="norm"):
        WorstCaseBudget(eps={"l0": (0.0, 1.0)})
    with pytest.raises(InputError, match="formulation"):
        WorstCaseBudget(formulations=("logit", "magic"))
    with pytest.raises(InputError, match="lambdas"):
        WorstCaseBudget(lambdas=())
    assert [f for _, f, _ in WorstCaseBudget().attacks][0] == Formulation.CW_L2


def test_random_starts_depend_on_the_input_id_not_its_batch(batch):
    x, _ = batch
    ids = torch.arange(100, 100 + x.shape[0])
    for norm in ("linf", "l2"):
        full = _random_start(x, 0.3, Norm(norm), 5, ids, 2)
        part = _random_start(x[3:7], 0.3, Norm(norm), 5, ids[3:7], 2)
        assert torch.equal(full[3:7], part)
        assert not torch.equal(full, _random_start(x, 0.3, Norm(norm), 5, ids, 3))  # a new draw per restart
        assert not torch.equal(full, _random_start(x, 0.3, Norm(norm), 6, ids, 2))  # and per seed
    delta = (_random_start(x, 0.3, Norm.L2, 5, ids, 1) - x).flatten(1).norm(dim=1)
    assert bool((delta <= 0.3 + 1e-6).all())


def test_natural_starts_are_accepted_images_of_another_class(tiny_models, fpr_detector, batch):
    x, y = batch
    model = tiny_models["ce"]
    starts = natural_starts(model, fpr_detector, x, y)
    with torch.no_grad():
        out = model.forward_features(starts)
        pred, accepted = out.logits.argmax(1), fpr_detector.accept(out)
    moved = (starts != x).flatten(1).any(1)
    assert bool(moved.any())
    # every moved start is a clean batch image, classified as its own (other) label and accepted
    assert bool(((pred != y) & accepted)[moved].all())
    flat = x.flatten(1)
    for i in moved.nonzero().squeeze(1).tolist():
        j = int((flat - starts[i].flatten()).abs().sum(1).argmin())
        assert torch.equal(starts[i], x[j]) and int(y[j]) != int(y[i])
    # at a radius covering the box, the natural-start attack alone breaks every input that had one
    budget = _budget(eps={"linf": (0.0, 0.1)}, formulations=("logit",), restarts=1, steps=2, large_eps=1.0,
                     cascade=False, check_steps=False)
    t = worst_case_examples(model, {"c": fpr_detector}, x, y, budget=budget, seed=0)
    assert bool(t["c.large"].bool()[moved].all())


def test_supervised_baselines_are_attacked_through_their_layers(tiny_models, mnist_test, batch):
    """LID and Mahalanobis-LR enter the worst case as TappedScores: finite, non-zero detector gradients,
    attacks that break inputs, and no hooks left on the model afterwards."""
    from rcedetect.detectors.attackable import TappedScore
    from rcedetect.detectors.lid import LIDDetector
    from rcedetect.detectors.mahalanobis import MahalanobisDetector
    from rcedetect.detectors.supervised import baseline_inputs
    from rcedetect.detectors.taps import collect_layer_features, default_layers

    model = tiny_models["ce"]
    x, y = batch
    clean, labels = mnist_test.float_images(slice(0, 120)), mnist_test.labels[:120].clone()
    far = (clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    layers = default_layers(model)
    flat = [collect_layer_features(model, v, layers, reduce="flatten") for v in (clean, far)]
    mean = [collect_layer_features(model, v, layers, reduce="mean") for v in (clean, far)]
    lid = LIDDetector(k=10, batch_size=60).fit(flat[0], None, flat[1])
    mlr = MahalanobisDetector().fit_gaussians(mean[0], labels, num_classes=10)
    mlr.fit_regression(mlr.layer_scores(mean[0]), None, mlr.layer_scores(mean[1]))
    cal_images = mnist_test.float_images(slice(200, 400))
    detectors = {}
    for name, fitted in (("lid", lid), ("mahalanobis-lr", mlr)):
        cal, _ = baseline_inputs(model, {name: fitted}, cal_images)
        detectors[name] = ThresholdDetector(TappedScore(model, fitted), fpr=0.05).calibrate(cal[name])
    budget = _budget(eps={"linf": (0.0, 0.3)}, formulations=("logit", "sum"), restarts=1, steps=10, large_eps=None,
                     check_steps=False)
    t = worst_case_examples(model, detectors, x, y, budget=budget, seed=0)
    for name in detectors:
        assert int(t[f"{name}.grad_bad"].sum()) == 0, name
        # the attacks break inputs through the layers (how many depends on the tiny models' training: >= 2
        # of 12 seen for Mahalanobis-LR, most for LID)
        assert int(t[f"{name}.broken.linf"][:, -1].sum()) >= 1, name
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
