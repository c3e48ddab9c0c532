"""The authors' protocol where the paper is silent (P2333/Reverse-Cross-Entropy): single-feature JSMA,
pad-and-crop CIFAR-10 augmentation, AUC.m's tie rule. Each against a slow, literal reference."""

import numpy as np
import pytest
import sklearn.metrics
import torch

from rcedetect.attacks import jsma
from rcedetect.augment import AUGMENTATIONS, augmentation_of, cifar_augment, pad_crop_augment
from rcedetect.config import TrainConfig, preset_config
from rcedetect.errors import InputError, RceDetectError
from rcedetect.evaluation.detection import auc_score

# ---------------------------------------------------------------------------------------------- JSMA


def toy_model(seed: int = 0, classes: int = 5, side: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(side * side, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, classes)).double().eval()
    with torch.no_grad():
        net[1].weight.mul_(6.0)  # strong enough that some least-likely targets are reached in 40 steps
    return net


def reference_single_jsma(model, x, target, theta, max_iters, output):
    """The authors' `_jsma_impl` for one image, step by step in float64. Returns (x_adv, chosen features)."""
    x_adv, chosen = x.clone().flatten(), []
    movable = lambda v: v < 1.0 if theta > 0 else v > 0.0  # noqa: E731

    def f(flat):
        logits = model(flat.view(1, *x.shape))[0]
        return logits.softmax(0) if output == "probs" else logits

    for _ in range(max_iters):
        mask = movable(x_adv)
        if f(x_adv).argmax().item() == target or not mask.any():
            break
        jac = torch.autograd.functional.jacobian(f, x_adv)  # (L, d)
        dt_dx = jac[target]
        do_dx = jac.sum(0) - dt_dx  # as the authors: gradient of the summed output minus the target row
        if theta < 0:
            dt_dx, do_dx = -dt_dx, -do_dx  # mirror image for decreasing features
        domain = mask & (dt_dx >= 0) & (do_dx <= 0)
        if domain.any():
            score = torch.where(domain, dt_dx * do_dx.abs(), torch.tensor(-np.inf, dtype=x.dtype))
        else:
            score = torch.where(mask, dt_dx - do_dx, torch.tensor(-np.inf, dtype=x.dtype))
        p = int(score.argmax())
        chosen.append(p)
        x_adv[p] = (x_adv[p] + theta).clamp(0.0, 1.0)
    return x_adv.view(x.shape), chosen


@pytest.mark.parametrize("output", ["probs", "logits"])
@pytest.mark.parametrize("theta", [0.3, 1.0, -0.4])
def test_single_feature_jsma_equals_the_literal_reference(output, theta):
    model = toy_model()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 4, 4, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    with torch.no_grad():
        target = model(x).argmin(1)  # the authors' default target: the least likely class
    result = jsma(model, x, target, theta=theta, max_iters=40, output=output)
    reused = 0
    for i in range(len(x)):
        ref, chosen = reference_single_jsma(model, x[i], int(target[i]), theta, 40, output)
        torch.testing.assert_close(result.x_adv[i], ref, rtol=0, atol=1e-12)
        reused += len(chosen) - len(set(chosen))
    if abs(theta) < 1:
        assert reused > 0, "with theta < 1 a feature must be chosen again until it saturates"
    assert torch.equal(result.success, model(result.x_adv).argmax(1) == target)
    assert result.success.any()


def test_single_feature_jsma_reuses_a_pixel_until_it_saturates():
    model = toy_model(1)
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    with torch.no_grad():
        target = model(x).argmin(1)
    ref, chosen = reference_single_jsma(model, x[0], int(target[0]), 0.2, 12, "probs")
    out = jsma(model, x, target, theta=0.2, max_iters=12).x_adv
    torch.testing.assert_close(out[0], ref, rtol=0, atol=1e-12)
    counts = torch.from_numpy(np.bincount(chosen, minlength=16))
    assert counts.max() >= 3  # 0.5 -> 0.7 -> 0.9 -> 1.0: three steps on one pixel, then it leaves the domain
    assert (out[0].flatten()[counts >= 3] == 1.0).all()
    # at most max_iters changed features, one per iteration
    assert int((out != x).sum()) <= 12


def test_single_feature_jsma_caps_and_options():
    model = toy_model()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    r = jsma(model, x, target, max_iters=2)  # theta = 1: each step saturates a feature
    assert ((r.x_adv != x).flatten(1).sum(1) <= 2).all()
    assert ((jsma(model, x, target, gamma=2 / 16).x_adv != x).flatten(1).sum(1) <= 2).all()
    pair = jsma(model, x, target, max_iters=2, mode="pair")
    assert ((pair.x_adv != x).flatten(1).sum(1) <= 4).all()
    with pytest.raises(InputError, match="mode"):
        jsma(model, x, target, mode="triple")


# ---------------------------------------------------------------------------------------- augmentation


def test_pad_crop_equals_a_hand_computed_reference_and_never_interpolates():
    n, c, h, w, pad = 64, 2, 4, 5, 2
    x = (torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w) + 1) / (n * c * h * w + 1)
    out = pad_crop_augment(x, torch.Generator().manual_seed(3), pad=pad)
    assert out.shape == x.shape
    # no interpolation: every output value is an input value of the same image or the zero padding
    for i in range(n):
        allowed = set(x[i].flatten().tolist()) | {0.0}
        assert set(out[i].flatten().tolist()) <= allowed
    # recover each image's crop offset and flip by brute force over the (2 pad + 1)^2 x 2 candidates
    padded = torch.zeros(n, c, h + 2 * pad, w + 2 * pad)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    found = []
    for i in range(n):
        hits = [(oy, ox, flip) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1) for flip in (False, True)
                if torch.equal(out[i], (lambda crop: crop.flip(2) if flip else crop)(
                    padded[i, :, oy:oy + h, ox:ox + w]))]
        assert len(hits) == 1, hits  # distinct input values: exactly one candidate matches
        found.append(hits[0])
    # the recovered draws are the seeded ones: offsets y, offsets x, then flips, from the generator
    g = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    assert found == list(zip(oy.tolist(), ox.tolist(), flip.tolist()))
    assert len({f[0] for f in found}) == 2 * pad + 1 and 0 < sum(f[2] for f in found) < n
    assert torch.equal(out, pad_crop_augment(x, torch.Generator().manual_seed(3), pad=pad))


def test_augmentation_choice_in_the_training_config():
    assert AUGMENTATIONS == {"pad-crop": pad_crop_augment, "resize": cifar_augment}
    cifar, mnist = preset_config("cifar10", "ce"), preset_config("mnist", "ce")
    assert cifar.augment == "pad-crop" and augmentation_of(cifar.augment) is pad_crop_augment
    assert mnist.augment is False and augmentation_of(mnist.augment) is None  # MNIST: never augmented
    # configs written before the choice existed say True: they were trained with the bilinear zoom
    assert augmentation_of(True) is cifar_augment
    assert TrainConfig.from_dict(cifar.to_dict()) == cifar
    with pytest.raises(RceDetectError, match="unknown augmentation"):
        augmentation_of("zoom")


# ----------------------------------------------------------------------------------------------- AUC


def auc_m(test_targets, output):
    """Line-by-line replay of the authors' Matlab_scripts/AUC.m (1-based ranks, MATLAB's stable sort)."""
    order = np.argsort(output, kind="stable") + 1  # [A, I] = sort(output)
    m = sum(1 for t in test_targets if t == 1)
    n = len(output) - m
    sigma = 0
    for i in range(m + n, 0, -1):  # for i = M+N:-1:1
        if test_targets[order[i - 1] - 1] == 1:
            sigma += i
    return (sigma - (m + 1) * m / 2) / (m * n)


@pytest.mark.parametrize("clean, adv", [
    ([1.0, 1.0, 0.5], [1.0, 0.2]),
    ([0.3, 0.3, 0.3, 0.9], [0.3, 0.3, 0.1]),
    ([0.5, 0.5], [0.5, 0.5, 0.5]),
    ([0.1, 0.4, 0.4, 0.8, 1.0], [0.4, 0.8, 0.05, 1.0, 0.4, 0.2]),
])
def test_official_auc_ties_replay_auc_m(clean, adv):
    # auc_of_roc_RCE.m: targets [ones(clean) zeros(adv)], outputs [clean adv]
    official = auc_m([1] * len(clean) + [0] * len(adv), np.array(clean + adv))
    assert auc_score(clean, adv, ties="official") == pytest.approx(official, abs=1e-15)
    strict = np.mean([c > a for c in clean for a in adv])
    assert official == pytest.approx(strict, abs=1e-15)  # every clean/adversarial tie counts 0
    half = sklearn.metrics.roc_auc_score([1] * len(clean) + [0] * len(adv), clean + adv)
    assert auc_score(clean, adv) == pytest.approx(half) and auc_score(clean, adv, ties="half") == pytest.approx(half)
    assert official < half  # each example has ties


def test_official_auc_hand_value_and_no_ties():
    assert auc_score([1.0, 1.0, 0.5], [1.0, 0.2], ties="official") == pytest.approx(3 / 6)
    assert auc_score([1.0, 1.0, 0.5], [1.0, 0.2]) == pytest.approx(3 / 6 + 2 / 12)
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(1, 1, 50), rng.normal(0, 1, 40)  # no ties: both rules agree
    assert auc_score(clean, adv, ties="official") == pytest.approx(auc_score(clean, adv), abs=1e-12)
    with pytest.raises(InputError, match="ties"):
        auc_score(clean, adv, ties="zero")


# ------------------------------------------------------------------ C&W-wb: attack bank, eta, ratio
def _kd_with_bank(seed=0, classes=3, per_class=12, dim=4, bandwidth_sq=0.7):
    from rcedetect.detectors import KernelDensity
    from rcedetect.models import ModelOutput

    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(classes * per_class, dim, generator=gen)
    labels = torch.arange(classes).repeat_interleave(per_class)
    logits = torch.zeros(features.shape[0], classes)
    kd = KernelDensity(bandwidth_sq, n_per_class=per_class, seed=seed).fit(ModelOutput(logits, features), labels,
                                                                          num_classes=classes)
    return kd


def test_attack_eta_is_the_median_of_the_authors_median_for_attack():
    """eta_c = -log median_j KD_c(z_j) over the class-c training points z_j of the detector's bank,
    KD against the attack bank with the self-kernel of its members kept (median_for_attack.m); the
    leave-one-out variant drops it. Float64 brute force."""
    from rcedetect.attacks.cw_wb import attack_bank, attack_eta

    kd = _kd_with_bank()
    sub, member = attack_bank(kd, 5, seed=3)
    bank, sub_bank = kd.bank_.double(), sub.bank_.double()
    for leave_one_out in (False, True):
        eta = attack_eta(kd, sub, member, leave_one_out=leave_one_out)
        for c, (part, sub_part) in enumerate(zip(kd.class_slices(), sub.class_slices())):
            values = []
            for row in range(part.start, part.stop):
                d2 = ((bank[row] - sub_bank[sub_part]) ** 2).sum(1)
                kernels = torch.exp(-d2 / kd.bandwidth_sq)
                own = int(member[row])
                if leave_one_out and own >= 0:
                    kernels = torch.cat([kernels[:own - sub_part.start], kernels[own - sub_part.start + 1:]])
                values.append(-torch.log(kernels.mean()))
            # torch.quantile(0.5) averages the two middle values of an even count, like MATLAB's median.
            assert float(eta[c]) == pytest.approx(float(np.median(torch.stack(values).numpy())), rel=1e-9, abs=1e-12)
    assert not torch.equal(attack_eta(kd, sub, member), attack_eta(kd, sub, member, leave_one_out=True))


def test_table3_official_ratio_success_and_distortion_by_hand():
    """summarize_white_box on a hand-made result: the official ratio counts f2_attack > 0 among the
    counted (clean correct AND target reached); success and distortion follow test_adv.py (full
    success on the attack bank, over clean-correct inputs)."""
    from rcedetect.attacks import CWWBResult
    from rcedetect.evaluation.threat_models import summarize_white_box

    x = torch.zeros(5, 1, 2, 2)
    x_adv = x.clone()
    x_adv[:, 0, 0, 0] = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])  # distortion = 255 * v / 2
    y = torch.tensor([0, 1, 2, 3, 4])
    clean_pred = torch.tensor([0, 1, 2, 3, 0])                  # the last clean image is wrong
    fooled = torch.tensor([True, True, True, False, True])
    f2_attack = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.0])
    f2_full = torch.tensor([0.3, 0.5, 0.0, 0.0, 0.0])
    result = CWWBResult(x_adv, fooled & (f2_full <= 0), f2_full, fooled, fooled, f2_attack, (y + 1) % 5)
    row = summarize_white_box(result, x, y, clean_pred)
    # counted = rows 0, 1, 2; f2_attack > 0 on row 1 only; full bank f2 > 0 on rows 0 and 1.
    assert row["n_counted"] == 3
    assert row["ratio_f2_positive_attack_bank_percent"] == pytest.approx(100 / 3)
    assert row["ratio_f2_positive_percent"] == pytest.approx(200 / 3)
    # official success: clean correct (rows 0-3) with fooled & f2_attack <= 0: rows 0, 2 -> 2 of 4.
    assert row["success_percent"] == pytest.approx(50.0)
    assert row["success_full_bank_percent"] == pytest.approx(25.0)   # row 2 only
    assert row["mean_distortion_official"] == pytest.approx(255 * (0.1 + 0.3) / 2)


def test_phase2_measures_l2_from_the_phase1_image_by_default_in_the_presets(monkeypatch):
    """The presets run C&W-wb with l2_from="phase1" (carliniL2_specific.py: the L2 term is taken to
    the image phase 2 starts from), and cw_wb then hands phase 2 x_ref = the phase-1 result."""
    import importlib

    cw_wb_module = importlib.import_module("rcedetect.attacks.cw_wb")
    from rcedetect.reproduce.presets import get_preset

    for dataset in ("mnist", "cifar10"):
        for name in ("paper", "quick", "toy"):
            assert get_preset(dataset, name).cwwb_settings_for(0.0)["l2_from"] == "phase1"
    calls = []
    real = cw_wb_module.cw_l2_search

    def spy(model, x, target, **kwargs):
        out = real(model, x, target, **kwargs)
        calls.append((kwargs.get("x_ref"), out))
        return out

    monkeypatch.setattr(cw_wb_module, "cw_l2_search", spy)
    from rcedetect.detectors import KernelDensity
    from rcedetect.inference import batched_outputs
    from rcedetect.models import ModelOutput

    class Tiny(torch.nn.Module):  # forward_features like rcedetect's models: logits and 6-d features
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body, self.head = torch.nn.Linear(16, 6), torch.nn.Linear(6, 3)

        def forward_features(self, x):
            z = torch.tanh(self.body(x.flatten(1)))
            return ModelOutput(self.head(z), z)

        def forward(self, x):
            return self.forward_features(x).logits

    model = Tiny().eval()
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(60, 1, 4, 4, generator=gen)
    out = batched_outputs(model, train, memory_format=torch.contiguous_format)
    labels = torch.arange(60) % 3  # every class populated: the bank only needs features and labels
    kd = KernelDensity(1.0, n_per_class=20, seed=0).fit(out, labels, num_classes=3)
    x = torch.rand(4, 1, 4, 4, generator=gen)
    y = batched_outputs(model, x, memory_format=torch.contiguous_format).logits.argmax(1)
    for l2_from in ("phase1", "clean"):
        calls.clear()
        cw_wb_module.cw_wb(model, x, y, kd, l2_from=l2_from, binary_search_steps=1, max_iters=3,
                           attack_bank_size=4, lr=0.1)
        (ref1, phase1), (ref2, _) = calls
        assert ref1 is None
        assert torch.equal(ref2, phase1.x_adv if l2_from == "phase1" else x)
