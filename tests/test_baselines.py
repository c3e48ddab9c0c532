"""Baseline detectors beside the paper's metrics: layer taps, LID (Ma et al. 2018) and Mahalanobis
(Lee et al. 2018), against float64 brute force and scikit-learn, on a small conv net defined here."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.covariance import EmpiricalCovariance
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from torch import nn

from rcedetect.detectors import KernelDensity, ThresholdDetector
from rcedetect.detectors.lid import LIDDetector, lid_mle, minibatch_lids
from rcedetect.detectors.mahalanobis import (MAGNITUDES, MahalanobisDetector, MahalanobisMetric,
                                             class_means_and_covariance, gaussian_scores, preprocess_inputs)
from rcedetect.detectors.taps import LayerTaps, TappedOutput, collect_layer_features, default_layers
from rcedetect.errors import InputError
from rcedetect.models import ModelOutput, resnet


class SmallConvNet(nn.Module):
    """Not rcedetect's ResNet: conv -> ReLU -> conv -> ReLU -> GAP -> linear, on 1x8x8 inputs."""

    def __init__(self, num_classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.act(self.features(x))).flatten(1))


def _images(n, seed=0, num_classes=3):
    """Class-dependent blobs so that class-conditional statistics differ."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    x[:, :, :4, :4] += (y == 0).float()[:, None, None, None] * 0.5
    x[:, :, 4:, 4:] += (y == 1).float()[:, None, None, None] * 0.5
    return x, y


# ------------------------------------------------------------------------------------- taps
def test_layer_taps_match_manual_forward_and_remove_hooks():
    net = SmallConvNet().eval()
    x, _ = _images(10)
    taps = LayerTaps(net, ["features.0", "pool", "head:input", ":input"])
    out, feats = taps(x)
    conv0 = net.features[0](x)
    gap = net.pool(net.act(net.features(x))).flatten(1)
    torch.testing.assert_close(out, net(x))
    torch.testing.assert_close(feats["features.0"], conv0.mean(dim=(2, 3)))
    torch.testing.assert_close(feats["pool"], gap)
    torch.testing.assert_close(feats["head:input"], gap)
    torch.testing.assert_close(feats[":input"], x.mean(dim=(2, 3)))
    assert list(feats) == ["features.0", "pool", "head:input", ":input"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    flat = LayerTaps(net, ["features.2"], reduce="flatten")(x).features["features.2"]
    assert flat.shape == (10, 6 * 8 * 8)
    assert LayerTaps(net, ["features.2"], reduce="none")(x).features["features.2"].shape == (10, 6, 8, 8)


def test_layer_taps_context_manager_and_exceptions():
    net = SmallConvNet().eval()
    x, _ = _images(4)
    with LayerTaps(net, ["pool"]) as taps:
        net(x)
        first = taps.features["pool"].clone()
        net(x[:2])  # each forward pass starts from empty captures
        assert taps.features["pool"].shape == (2, 6)
        assert any(m._forward_hooks for m in net.modules())
    torch.testing.assert_close(first, taps(x).features["pool"])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(RuntimeError):
        taps(torch.rand(2, 3, 8, 8))  # wrong channels: the conv raises inside the forward pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(RuntimeError), taps:
        net(torch.rand(2, 3, 8, 8))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_layer_taps_input_errors():
    net = SmallConvNet()
    with pytest.raises(InputError, match=r"unknown layer 'pol'.*close matches: pool"):
        LayerTaps(net, ["pol"])
    with pytest.raises(InputError, match="suffix"):
        LayerTaps(net, ["head:output"])
    with pytest.raises(InputError, match="reduce"):
        LayerTaps(net, ["pool"], reduce="max")
    with pytest.raises(InputError, match="list"):
        LayerTaps(net, "pool")
    shared = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    twice = nn.Sequential(shared[0], shared[1], shared[0])  # module "0" and "2" are the same Linear
    with pytest.raises(InputError, match="ran twice"):
        LayerTaps(twice, ["0"])(torch.rand(2, 3))
    with pytest.raises(InputError, match="default layers"):
        default_layers(net)


def test_default_layers_of_our_resnet():
    model = resnet(depth=8, in_channels=1, num_classes=10).eval()
    layers = default_layers(model)
    assert layers == ["stem", "blocks.0", "blocks.1", "blocks.2", "fc:input"]
    x = torch.rand(6, 1, 28, 28)
    tapped = collect_layer_features(model, (x * 255).to(torch.uint8), batch_size=4)
    ref = model.forward_features((x * 255).to(torch.uint8).float() / 255)
    torch.testing.assert_close(tapped.features["fc:input"], ref.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tapped.output, ref.logits, atol=1e-5, rtol=1e-5)
    assert [v.shape[1] for v in tapped.features.values()] == [16, 16, 32, 64, 64]


# -------------------------------------------------------------------------------------- LID
def _ref_lid(queries, reference, k, drop):
    """The formula literally, float64: -(1/k Σ log(r_i / r_k))^-1 over the sorted distances."""
    out = []
    for q in queries.astype(np.float64):
        r = np.sort(np.linalg.norm(reference.astype(np.float64) - q, axis=1))[drop:drop + k]
        out.append(-1.0 / np.mean(np.log(r / r[-1])))
    return np.array(out)


def test_lid_mle_matches_float64_brute_force():
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(50, 7, generator=g)
    queries = torch.randn(9, 7, generator=g)
    np.testing.assert_allclose(lid_mle(queries, reference, k=20).numpy(),
                               _ref_lid(queries.numpy(), reference.numpy(), 20, 0), rtol=1e-12)
    np.testing.assert_allclose(lid_mle(reference, reference, k=20, drop_nearest=True).numpy(),
                               _ref_lid(reference.numpy(), reference.numpy(), 20, 1), rtol=1e-12)
    # Fewer points than k: k shrinks to what is available, like the authors' mle_batch.
    np.testing.assert_allclose(lid_mle(reference[:8], reference[:8], k=20, drop_nearest=True).numpy(),
                               _ref_lid(reference[:8].numpy(), reference[:8].numpy(), 7, 1), rtol=1e-12)
    with pytest.raises(InputError, match="reference points"):
        lid_mle(queries, reference[:2], k=20, drop_nearest=True)


def test_minibatch_lids_use_each_minibatchs_clean_points():
    g = torch.Generator().manual_seed(2)
    clean = {"a": torch.randn(70, 5, generator=g), "b": torch.randn(70, 3, generator=g)}
    adv = {name: v + 0.3 * torch.randn(v.shape, generator=g) for name, v in clean.items()}
    lc, la = minibatch_lids(clean, adv, k=6, batch_size=30)
    assert lc.shape == la.shape == (70, 2) and lc.dtype == torch.float64
    for j, name in enumerate(clean):
        for start, stop in ((0, 30), (30, 60), (60, 70)):
            ref = clean[name][start:stop].numpy()
            k = min(6, stop - start - 1)
            np.testing.assert_allclose(lc[start:stop, j].numpy(), _ref_lid(ref, ref, k, 1), rtol=1e-12)
            np.testing.assert_allclose(la[start:stop, j].numpy(),
                                       _ref_lid(adv[name][start:stop].numpy(), ref, k, 1), rtol=1e-12)


def _subspace_data(n, seed):
    """Clean points on a 2-D plane in 12-D; 'adversarial' ones pushed off it (higher LID)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(2, 12, generator=torch.Generator().manual_seed(99))
    clean = torch.randn(n, 2, generator=g) @ basis
    noisy = clean + 0.01 * torch.randn(n, 12, generator=g)
    adv = clean + 1.0 * torch.randn(n, 12, generator=g)
    return ({"plane": clean, "twice": 2 * clean}, {"plane": noisy, "twice": 2 * noisy},
            {"plane": adv, "twice": 2 * adv})


def test_lid_detector_separates_and_round_trips(tmp_path):
    clean, noisy, adv = _subspace_data(300, seed=3)
    detector = LIDDetector(k=10, batch_size=50)
    params = detector.params()
    assert detector.fit(clean, noisy, adv) is detector
    assert detector.params() == params and detector.k == 10 and detector.batch_size == 50
    assert detector.layers_ == ["plane", "twice"] and detector.reference_["plane"].shape == (50, 12)
    t_clean, _, t_adv = _subspace_data(200, seed=4)
    s_clean, s_adv = detector.score_samples(t_clean), detector.score_samples(t_adv)
    assert s_clean.shape == (200,) and float(s_clean.mean()) > float(s_adv.mean())
    assert float((s_clean > s_adv).double().mean()) > 0.9
    # precomputed characteristics take the same path
    torch.testing.assert_close(detector.score_samples(detector.characteristics(t_clean)), s_clean)
    save_file(detector.state_tensors(), tmp_path / "lid.safetensors")
    loaded = LIDDetector.from_state(detector.params(), load_file(tmp_path / "lid.safetensors"))
    assert loaded.layers_ == detector.layers_
    torch.testing.assert_close(loaded.score_samples(t_adv), s_adv)
    # a fitted LID detector thresholds like the paper's metrics
    thresholded = ThresholdDetector(detector, fpr=0.1).fit(calibration=t_clean)
    assert abs(float((~thresholded.accept(t_clean)).double().mean()) - 0.1) < 0.02
    assert float((~thresholded.accept(t_adv)).double().mean()) > 0.8


# ------------------------------------------------------------------------------ Mahalanobis
def test_class_means_and_tied_covariance_match_sklearn():
    g = torch.Generator().manual_seed(5)
    y = torch.arange(120) % 4
    f = torch.randn(120, 6, generator=g, dtype=torch.float64) + 2.0 * y[:, None].double()
    means, cov, prec = class_means_and_covariance(f, y)
    lda = LinearDiscriminantAnalysis(solver="lsqr", store_covariance=True).fit(f.numpy(), y.numpy())
    np.testing.assert_allclose(means.numpy(), lda.means_, rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), lda.covariance_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(prec.numpy(), np.linalg.inv(lda.covariance_), rtol=1e-8)
    ec = EmpiricalCovariance().fit((f - means[y]).numpy())
    ref = np.max(np.stack([-0.5 * ec.mahalanobis(f.numpy() - means[c].numpy()) for c in range(4)], 1), 1)
    metric = MahalanobisMetric().fit(f, y)
    np.testing.assert_allclose(metric.score(f).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(gaussian_scores(f, means, prec).max(1).values.numpy(), ref, rtol=1e-10)


def test_preprocessing_step_matches_hand_gradient_on_linear_model():
    torch.manual_seed(6)
    lin = nn.Linear(5, 3).double()
    with torch.no_grad():
        lin.weight[:, 4] = 0.0  # input 4 has no influence: zero gradient, the authors step it by +eps
    y = torch.arange(60) % 2
    train_x = torch.randn(60, 5, dtype=torch.float64) + y[:, None].double()
    with torch.no_grad():
        means, _, prec = class_means_and_covariance(lin(train_x), y)
    x = torch.randn(8, 5, dtype=torch.float64)
    eps = 0.01
    x_hat = preprocess_inputs(lin, x, means, prec, magnitude=eps)
    # Hand-computed: f = Wx + b, closest class c, grad_x 1/2 (f-μ_c)ᵀ P (f-μ_c) = Wᵀ P (f - μ_c).
    with torch.no_grad():
        f = lin(x)
        c = gaussian_scores(f, means, prec).argmax(1)
        grad = (f - means[c]) @ prec @ lin.weight
    expected = x - eps * torch.where(grad >= 0, 1.0, -1.0).double()
    torch.testing.assert_close(x_hat, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(x_hat[:, 4], x[:, 4] - eps)
    with torch.no_grad():  # the step increases the closest-class score
        before = gaussian_scores(lin(x), means, prec).max(1).values
        after = gaussian_scores(lin(x_hat), means, prec).max(1).values
    assert bool((after > before).all())
    assert all(p.grad is None for p in lin.parameters())
    assert MAGNITUDES == (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)


def test_kd_and_mahalanobis_on_a_foreign_net_through_layer_taps():
    net = SmallConvNet().eval()
    x, y = _images(90)
    tapped = collect_layer_features(net, x, ["pool", "features.0"], batch_size=32)
    gap = net.pool(net.act(net.features(x))).flatten(1).detach()
    torch.testing.assert_close(tapped.features["pool"], gap)
    out = ModelOutput(tapped.output, tapped.features["pool"])
    kd = KernelDensity(0.5, n_per_class=None).fit(out, y)
    sq = torch.cdist(gap.double(), gap.double()) ** 2
    pred = out.logits.argmax(1)
    ref = torch.stack([torch.logsumexp(-sq[i, y == pred[i]] / 0.5, 0) - torch.log((y == pred[i]).sum().double())
                       for i in range(90)])
    torch.testing.assert_close(kd.score(out).double(), ref, atol=1e-4, rtol=1e-5)
    metric = ThresholdDetector(MahalanobisMetric(), fpr=0.1).fit(out, y, calibration=out)
    means, _, prec = class_means_and_covariance(gap, y, 3)
    torch.testing.assert_close(metric.score_samples(out), gaussian_scores(gap, means, prec).max(1).values)
    # supervised, two layers, with preprocessing: each layer's own step through the taps
    detector = MahalanobisDetector(magnitude=0.01).fit_gaussians(tapped, y)
    with LayerTaps(net, detector.layers_) as taps:
        scores = detector.layer_scores_of_inputs(taps, x[:10])
    for j, name in enumerate(detector.layers_):
        g = detector.gaussians_[name]
        def feature_fn(v, name=name):
            return LayerTaps(net, [name])(v).features[name]
        x_hat = preprocess_inputs(feature_fn, x[:10], g.means_, g.precision_, magnitude=0.01)
        torch.testing.assert_close(scores[:, j], g.score(feature_fn(x_hat)).detach())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with LayerTaps(net, detector.layers_) as taps:
        far = detector.layer_scores_of_inputs(taps, torch.rand(30, 1, 8, 8) * 3.0)
        near = detector.layer_scores_of_inputs(taps, x[:30])
    assert detector.fit_regression(near, None, far) is detector
    assert float(detector.score_samples(near).mean()) > float(detector.score_samples(far).mean())
    with pytest.raises(InputError, match="need the inputs"):
        detector.score_samples(tapped)  # features without the preprocessing step are refused


def test_mahalanobis_detector_contract_and_round_trip(tmp_path):
    net = SmallConvNet().eval()
    x, y = _images(150, seed=7)
    layers = ["features.0", "pool"]
    train = collect_layer_features(net, x, layers)
    clean = collect_layer_features(net, _images(150, seed=8)[0], layers)
    noisy = collect_layer_features(net, (_images(150, seed=8)[0] + 0.02 * torch.randn(150, 1, 8, 8)), layers)
    adv = collect_layer_features(net, torch.rand(150, 1, 8, 8) * 3.0, layers)  # far from the data
    detector = MahalanobisDetector()
    params = detector.params()
    with pytest.raises(InputError, match="not fitted"):
        detector.score_samples(clean)
    with pytest.raises(InputError, match="no Gaussians"):
        detector.layer_scores(clean)
    assert detector.fit(train, y, clean=clean, adversarial=adv, noisy=noisy) is detector
    assert detector.params() == params
    s_clean, s_adv = detector.score_samples(clean), detector.score_samples(adv)
    assert float(s_clean.mean()) > float(s_adv.mean())
    torch.testing.assert_close(detector.score_samples(detector.layer_scores(clean)), s_clean)
    save_file(detector.state_tensors(), tmp_path / "m.safetensors")
    loaded = MahalanobisDetector.from_state(detector.params(), load_file(tmp_path / "m.safetensors"))
    assert loaded.layers_ == layers
    torch.testing.assert_close(loaded.score_samples(adv), s_adv)
    with pytest.raises(InputError, match="need the inputs"):
        MahalanobisDetector(magnitude=0.01).fit(train, y, clean=clean, adversarial=adv)
    with pytest.raises(InputError, match="lack layers"):
        detector.layer_scores({"pool": clean.features["pool"]})


def test_supervised_detectors_refuse_bad_calls():
    clean, noisy, adv = _subspace_data(120, seed=9)
    with pytest.raises(InputError, match="not fitted"):
        LIDDetector().score_samples(clean)
    with pytest.raises(InputError, match="adversarial"):
        LIDDetector(k=5, batch_size=40).fit(clean, noisy)
    with pytest.raises(InputError, match="same rows"):
        LIDDetector(k=5, batch_size=40).fit(clean, None, {k: v[:100] for k, v in adv.items()})
    with pytest.raises(InputError, match="batch_size"):
        LIDDetector(k=20, batch_size=20)
    with pytest.raises(TypeError):
        LIDDetector(neighbours=20)
    with pytest.raises(InputError, match="magnitude"):
        MahalanobisDetector(magnitude=-0.1)
    metric = MahalanobisMetric()
    with pytest.raises(InputError, match="not fitted"):
        metric.score(torch.zeros(3, 4))
    with pytest.raises(InputError, match=r"classes \[2\]"):
        metric.fit(torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1]), num_classes=3)
    assert isinstance(TappedOutput(torch.zeros(1), {}), tuple)


def test_saved_beside_a_checkpoint_with_the_existing_persistence(tmp_path, monkeypatch):
    """Once registered in persistence.METRIC_TYPES, the baselines save and load like K-density
    (safetensors + JSON, layer names such as 'fc:input' inside the tensor keys)."""
    from rcedetect.detectors import load_detector, persistence, save_detector

    model = resnet(depth=8, in_channels=1, num_classes=10).eval()
    x = torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    y = torch.arange(60) % 10
    tapped = collect_layer_features(model, x, ["blocks.2", "fc:input"], reduce="mean")
    out = ModelOutput(tapped.output, tapped.features["fc:input"])
    adv = collect_layer_features(model, (x + 0.5 * torch.rand(x.shape)).clamp(0, 1), ["blocks.2", "fc:input"])
    fitted = {
        "mahalanobis": (ThresholdDetector(MahalanobisMetric(), fpr=0.1).fit(out, y, calibration=out), out),
        "lid": (ThresholdDetector(LIDDetector(k=5, batch_size=30).fit(tapped, None, adv), fpr=0.1)
                .fit(calibration=tapped), tapped),
    }
    monkeypatch.setitem(persistence.METRIC_TYPES, "mahalanobis", MahalanobisMetric)
    monkeypatch.setitem(persistence.METRIC_TYPES, "lid", LIDDetector)
    for name, (detector, data) in fitted.items():
        save_detector(detector, tmp_path)
        loaded, _ = load_detector(tmp_path, name)
        assert loaded.threshold_ == detector.threshold_
        torch.testing.assert_close(loaded.score_samples(data), detector.score_samples(data))
    # the unsupervised metric's preprocessing on our ResNet = the generic step through a ":input" tap
    metric = fitted["mahalanobis"][0].metric_  # the fitted copy (the one passed in stays unfitted)
    taps = LayerTaps(model, ["fc:input"])
    expected = preprocess_inputs(lambda v: taps(v).features["fc:input"], x[:5], metric.means_, metric.precision_,
                                 magnitude=0.002)
    torch.testing.assert_close(metric.preprocess(model, x[:5], magnitude=0.002), expected)


# ------------------------------------------------------------------- the supervised fitting protocol
def test_matched_noise_has_each_images_adversarial_l2_and_fitting_indices_are_disjoint():
    from rcedetect.detectors.supervised import FitProtocol, fitting_indices, matched_noise

    g = torch.Generator().manual_seed(3)
    x = torch.full((6, 1, 8, 8), 0.5)
    x_adv = x + 0.01 * torch.randn(x.shape, generator=g)  # small: no clipping at 0 or 1
    noisy = matched_noise(x, x_adv, seed=1)
    torch.testing.assert_close((noisy - x).flatten(1).norm(dim=1), (x_adv - x).flatten(1).norm(dim=1))
    assert not torch.allclose(noisy, x_adv)
    assert torch.equal(noisy, matched_noise(x, x_adv, seed=1))
    protocol = FitProtocol(eps=0.1, n=300, n_gaussian=500)
    fit, gauss = fitting_indices(1000, protocol)
    assert fit.numel() == 300 and gauss.numel() == 500 and not set(fit.tolist()) & set(gauss.tolist())
    assert torch.equal(fit, fitting_indices(1000, protocol)[0])
    with pytest.raises(InputError, match="training images"):
        fitting_indices(700, protocol)
    with pytest.raises(InputError, match="not supported"):
        FitProtocol(eps=0.1, attack="cw")


def test_baseline_inputs_equal_the_layer_taps_path():
    """One forward pass with raw taps gives what the detectors get from `collect_layer_features`."""
    from rcedetect.detectors.supervised import baseline_inputs
    from rcedetect.names import Metric

    model = resnet(depth=8, in_channels=1, num_classes=10).eval()
    x = torch.rand(70, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.arange(70) % 10
    layers = default_layers(model)
    flat = collect_layer_features(model, x, layers, reduce="flatten")
    mean = collect_layer_features(model, x, layers, reduce="mean")
    noisy = collect_layer_features(model, (x + 0.1 * torch.rand(x.shape)).clamp(0, 1), layers, reduce="flatten")
    adv = collect_layer_features(model, (x + 0.4 * torch.rand(x.shape)).clamp(0, 1), layers, reduce="flatten")
    lid = LIDDetector(k=5, batch_size=35).fit(flat, noisy, adv)
    mlr = MahalanobisDetector().fit_gaussians(mean, y, num_classes=10)
    mlr.fit_regression(mlr.layer_scores(mean), None, mlr.layer_scores(
        collect_layer_features(model, (x + 0.4 * torch.rand(x.shape)).clamp(0, 1), layers, reduce="mean")))
    unsup = MahalanobisMetric().fit(mean.features["fc:input"], y, num_classes=10)
    inputs, logits = baseline_inputs(model, {"lid": lid, "mahalanobis-lr": mlr, "mahalanobis": unsup}, x,
                                     batch_size=32)
    torch.testing.assert_close(logits, flat.output)
    torch.testing.assert_close(inputs[Metric.LID], lid.characteristics(flat))
    torch.testing.assert_close(inputs[Metric.MAHALANOBIS_LR], mlr.layer_scores(mean))
    torch.testing.assert_close(inputs[Metric.MAHALANOBIS], model.forward_features(x).features)


def _fitted_baselines(model, n=70, seed=4):
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) % 10
    layers = default_layers(model)
    flat = collect_layer_features(model, x, layers, reduce="flatten")
    mean = collect_layer_features(model, x, layers, reduce="mean")
    far = (x + 0.4 * torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + 1))).clamp(0, 1)
    lid = LIDDetector(k=5, batch_size=35).fit(flat, None, collect_layer_features(model, far, layers, reduce="flatten"))
    mlr = MahalanobisDetector().fit_gaussians(mean, y, num_classes=10)
    mlr.fit_regression(mlr.layer_scores(mean), None,
                       mlr.layer_scores(collect_layer_features(model, far, layers, reduce="mean")))
    return lid, mlr


def test_tapped_scores_equal_the_baselines_and_have_gradients():
    """TappedScore (what the worst-case evaluation attacks) scores exactly what `baseline_inputs` + the
    fitted detector score, differentiably: its gradient matches a finite difference of that score."""
    from rcedetect.detectors.attackable import TappedScore
    from rcedetect.detectors.supervised import baseline_inputs

    model = resnet(depth=8, in_channels=1, num_classes=10).eval()
    lid, mlr = _fitted_baselines(model)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    inputs, _ = baseline_inputs(model, {"lid": lid, "mahalanobis-lr": mlr}, x)
    for name, fitted in (("lid", lid), ("mahalanobis-lr", mlr)):
        reference = fitted.score_samples(inputs[name]).float()
        with TappedScore(model, fitted) as metric:
            xa = x.clone().requires_grad_(True)
            score = metric.score(model.forward_features(xa))
            torch.testing.assert_close(score, reference, rtol=1e-4, atol=1e-4)
            (grad,) = torch.autograd.grad(score.sum(), xa)
            assert bool(torch.isfinite(grad).all()) and bool((grad.flatten(1).abs().amax(1) > 0).all()), name
            # directional derivative against a central difference of the score itself (float64 model)
            direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
            model64 = model.double()
            h = 1e-6
            with torch.no_grad():
                plus = metric.score(model64.forward_features(x.double() + h * direction.double())).double()
                minus = metric.score(model64.forward_features(x.double() - h * direction.double())).double()
            xd = x.double().requires_grad_(True)
            (g64,) = torch.autograd.grad(metric.score(model64.forward_features(xd)).double().sum(), xd)
            model.float()
            fd = (plus - minus) / (2 * h)
            analytic = (g64 * direction.double()).flatten(1).sum(1)
            # The ResNet is piecewise linear (leaky ReLU): a difference that crosses a kink is off, so most
            # (not all) of the six inputs must agree to 1e-5 (measured: 4-5 of 6 to 1e-8, the others 0.2-4 %).
            agree = (analytic - fd).abs() <= 1e-5 * fd.abs() + 1e-9
            assert int(agree.sum()) >= 4, (name, analytic.tolist(), fd.tolist())
        # detached again, and the precomputed inputs still score
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        torch.testing.assert_close(TappedScore(model, fitted).score(inputs[name]), reference)


def test_attackable_keeps_the_fitted_operating_point():
    from rcedetect.detectors.attackable import TappedScore, attackable
    from rcedetect.detectors.supervised import baseline_inputs

    model = resnet(depth=8, in_channels=1, num_classes=10).eval()
    lid, _ = _fitted_baselines(model)
    cal = baseline_inputs(model, {"lid": lid}, torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(3)))[0]
    saved = ThresholdDetector(lid, fpr=0.1).calibrate(cal["lid"])
    wrapped = attackable(model, saved)
    assert isinstance(wrapped.metric_, TappedScore) and wrapped.threshold_ == saved.threshold_
    assert wrapped.fpr_ == saved.fpr_ and torch.equal(wrapped.calibration_scores_, saved.calibration_scores_)
    confidence = ThresholdDetector(KernelDensity(1.0))
    assert attackable(model, confidence) is confidence  # metrics of the model output pass through


def test_tapped_scores_refuse_what_they_cannot_attack():
    from rcedetect.detectors.attackable import TappedScore
    from rcedetect.models import ModelOutput

    model = resnet(depth=8, in_channels=1, num_classes=10).eval()
    lid, mlr = _fitted_baselines(model)
    with pytest.raises(InputError, match="magnitude"):
        TappedScore(model, MahalanobisDetector(magnitude=0.01))
    with pytest.raises(InputError, match="LIDDetector or MahalanobisDetector"):
        TappedScore(model, MahalanobisMetric())
    with pytest.raises(InputError, match="not fitted"):
        TappedScore(model, LIDDetector())
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(InputError, match="not attached"):
        TappedScore(model, lid).score(model.forward_features(x))
    with TappedScore(model, lid) as metric:
        out = model.forward_features(x)
        with pytest.raises(InputError, match="not those of this model output"):
            metric.score(ModelOutput(out.logits[:2], out.features[:2]))
