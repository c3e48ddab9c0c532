"""The honest protocol of the supervised baselines (LID, Mahalanobis-LR) and the scoring of images by
every baseline, on rcedetect's ResNets (the layers of `taps.default_layers`).

    protocol = FitProtocol(eps=0.16)                                   # FGSM at the run's eps (default)
    fit_index, gaussian_index = fitting_indices(len(train), protocol)  # disjoint training images
    examples = fitting_examples(model, train.images[fit_index], train.labels[fit_index], protocol)
    fitted = fit_supervised(model, examples, protocol, gaussian_images=train.images[gaussian_index],
                            gaussian_labels=train.labels[gaussian_index])      # {Metric: fitted detector}
    inputs, logits = baseline_inputs(model, fitted, images)            # {Metric: what its .score takes}
    detector = ThresholdDetector(fitted[Metric.LID]).calibrate(clean_inputs[Metric.LID])

The protocol (Ma et al. 2018 and Lee et al. 2018 fit their detectors on one attack's examples; the
evaluation then asks how the detector fares on attacks it has not seen):
  * fitting examples are crafted with ONE attack (FGSM at the run's ε by default) on *training*
    images -- a seeded random subset, never the test pairs that are evaluated;
  * noisy twins: Gaussian noise scaled per image to the L2 norm of that image's adversarial
    perturbation, clipped to [0, 1] (the reference repositories use a per-dataset noise scale tuned to
    match the adversarial distortion; matching per image does the same without tuning);
  * only the paper's counted pairs are kept (clean classified correctly, adversarial misclassified),
    the same filter as the evaluated pairs (a trailing LID minibatch of fewer than k + 2 of them is
    dropped); labels: adversarial 1, clean and noisy 0;
  * Mahalanobis-LR's class Gaussians come from `n_gaussian` other training images (disjoint from
    the fitting examples, so the regression sees out-of-sample scores, as the authors' regression
    sees test-set scores).
Nothing here touches the test set. RCE's metrics (non-ME, K-density) need none of this: no
adversarial example at all.

Scoring a new input never looks at other inputs: LID against the stored clean reference minibatch of
training images (`LIDDetector.reference_`), Mahalanobis against the fitted Gaussians. (Ma et al.
evaluate on aligned minibatches of the test set, where a query's clean twin is in its reference:
not a deployable detector, so not what we do.) With `magnitude` 0 (the default) one forward pass per
batch gives every baseline's inputs and the logits; a positive `magnitude` adds Lee et al.'s input
preprocessing (one gradient per layer per input).
"""

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import torch

from ..errors import InputError
from ..names import SUPERVISED_METRICS, Attack, Dataset, Metric
from .lid import DEFAULT_BATCH_SIZE, DEFAULT_K, LIDDetector
from .mahalanobis import MahalanobisDetector, MahalanobisMetric
from .taps import LayerTaps, default_layers

# Table 2's FGSM eps per dataset (`reproduce.presets.SINGLE_EPS`, a test keeps them equal): the
# default fitting attack of `rcedetect detect --fit-adversarial`.
DEFAULT_FIT_EPS = {Dataset.MNIST: 0.16, Dataset.CIFAR10: 0.12}
# Attacks the fitting examples may come from: single-image L-inf attacks that need no target or seed.
FIT_ATTACKS = (Attack.FGSM, Attack.BIM, Attack.ILCM)
# Seeds the training-image permutation of the fitting examples (its own stream of `seed`).
FIT_PERMUTATION_STREAM = 7_000_011


@dataclass(frozen=True)
class FitProtocol:
    """How the supervised baselines are fitted (every field is recorded with the fitted detector).

    attack, eps: the one attack of the fitting examples and its L-inf budget (in [0, 1] pixel units).
    n: training images attacked (the counted ones are kept). n_gaussian: further training images
    that estimate Mahalanobis-LR's class Gaussians. magnitude: Mahalanobis' input-preprocessing step
    (0: none). k, lid_batch_size: LID's neighbours and minibatch (the authors' 20 and 100). seed: the
    training-image permutation, the noise and the regressions' CV.
    """

    eps: float
    attack: str = Attack.FGSM.value
    n: int = 1000
    n_gaussian: int = 5000
    magnitude: float = 0.0
    k: int = DEFAULT_K
    lid_batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0

    def __post_init__(self):
        attack = Attack.coerce(self.attack, "fitting attack")
        if attack not in FIT_ATTACKS:
            raise InputError(f"fitting attack {attack} is not supported: choose one of {', '.join(FIT_ATTACKS)}")
        object.__setattr__(self, "attack", attack.value)
        if not isinstance(self.eps, (int, float)) or not 0 < self.eps <= 1:
            raise InputError(f"fitting eps (--fit-eps) must be in (0, 1], got {self.eps!r}")
        if not isinstance(self.n, int) or self.n < self.lid_batch_size:
            raise InputError(f"fitting images (--fit-n) must be an int >= {self.lid_batch_size} "
                             f"(one LID minibatch), got {self.n!r}")
        if not isinstance(self.n_gaussian, int) or self.n_gaussian < 2:
            raise InputError(f"n_gaussian must be an int >= 2, got {self.n_gaussian!r}")
        if not self.magnitude >= 0:
            raise InputError(f"magnitude (--magnitude) must be >= 0, got {self.magnitude}")

    def to_dict(self) -> dict:
        return asdict(self)


class FittingExamples(NamedTuple):
    """Aligned fitting examples on the CPU, float in [0, 1]: row i of each is one training image."""

    clean: torch.Tensor
    noisy: torch.Tensor
    adversarial: torch.Tensor
    labels: torch.Tensor
    attacked: int              # training images attacked
    attack_success_rate: float  # of the attacked images: adversarial misclassified


def fitting_indices(n_train: int, protocol: FitProtocol):
    """(fitting-example indices (n,), Gaussian indices (n_gaussian,)): disjoint prefixes of one seeded
    permutation of the `n_train` training images."""
    if protocol.n + protocol.n_gaussian > n_train:
        raise InputError(f"the fitting protocol needs {protocol.n} + {protocol.n_gaussian} training images, "
                         f"the training set has {n_train}: lower --fit-n or n_gaussian")
    generator = torch.Generator().manual_seed(protocol.seed * FIT_PERMUTATION_STREAM + 1)
    order = torch.randperm(n_train, generator=generator)
    return order[:protocol.n], order[protocol.n:protocol.n + protocol.n_gaussian]


def matched_noise(x: torch.Tensor, x_adv: torch.Tensor, *, seed: int) -> torch.Tensor:
    """x + Gaussian noise with, per image, the L2 norm of x_adv - x, clipped to [0, 1] (CPU generator)."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
    flat = noise.reshape(x.shape[0], -1)
    target = (x_adv.detach().cpu().float() - x.detach().cpu().float()).reshape(x.shape[0], -1).norm(dim=1)
    flat.mul_((target / flat.norm(dim=1).clamp_min(1e-12)).unsqueeze(1))
    return (x.detach().cpu().float() + noise).clamp_(0.0, 1.0)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def fitting_examples(model, images, labels, protocol: FitProtocol, *, batch_size: int = 500,
                     device=None) -> FittingExamples:
    """Craft `protocol.attack` on training `images` (uint8 or float), add matched noise and keep the
    counted pairs. Images never leave the caller's subset (pass training images: the protocol)."""
    from ..attacks import ATTACKS  # attacks import detectors.kernel_density: import here, not at the top
    from ..inference import batched_outputs

    device = device or next(model.parameters()).device
    spec = ATTACKS[Attack.coerce(protocol.attack)]
    x, y = _as_float(images).cpu(), torch.as_tensor(labels).long().cpu()
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(f"fitting_examples got {x.shape[0]} images and {y.shape[0]} labels")
    adv = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size].to(device)
        adv.append(spec(model, batch, y[start:start + batch_size].to(device), eps=protocol.eps).x_adv.detach().cpu())
    x_adv = torch.cat(adv)
    clean_pred = batched_outputs(model, x, batch_size=batch_size, device=device).logits.argmax(1)
    adv_pred = batched_outputs(model, x_adv, batch_size=batch_size, device=device).logits.argmax(1)
    keep = (clean_pred == y) & (adv_pred != y)
    counted = int(keep.sum())
    if counted < protocol.lid_batch_size:
        raise InputError(f"only {counted} of {x.shape[0]} {protocol.attack} examples at eps {protocol.eps:g} are "
                         f"counted (clean right, adversarial wrong): LID needs one minibatch of "
                         f"{protocol.lid_batch_size}; raise --fit-n or --fit-eps")
    # A trailing LID minibatch with fewer than k + 2 rows would estimate with < k neighbours: drop it.
    remainder = counted % protocol.lid_batch_size
    if 0 < remainder < protocol.k + 2:
        keep[keep.nonzero().squeeze(1)[counted - remainder:]] = False
    noisy = matched_noise(x[keep], x_adv[keep], seed=protocol.seed)
    return FittingExamples(x[keep], noisy, x_adv[keep], y[keep], int(x.shape[0]),
                           float((adv_pred != y).float().mean()))


# ------------------------------------------------------------------------------ layer features
def _mean(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 2 else t.mean(dim=tuple(range(2, t.dim())))


def _flatten(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _batches(model, images, layers, *, batch_size, device):
    """(batch images on device, logits, {layer: raw activation}) per batch, in eval mode, without autograd."""
    device = device or next(model.parameters()).device
    taps = LayerTaps(model, layers, reduce="none")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), taps:
            for start in range(0, images.shape[0], batch_size):
                batch = _as_float(images[start:start + batch_size]).to(device)
                logits, feats = taps(batch)
                yield batch, logits, feats
    finally:
        model.train(was_training)


def layer_features(model, images, layers=None, *, reductions=("flatten", "mean"), batch_size: int = 500,
                   device=None) -> dict:
    """{reduction: {layer: (N, D) float32 CPU}} of `images` in one forward pass per batch."""
    layers = default_layers(model) if layers is None else list(layers)
    fns = {"flatten": _flatten, "mean": _mean}
    out = {r: {name: [] for name in layers} for r in reductions}
    for _, _, feats in _batches(model, images, layers, batch_size=batch_size, device=device):
        for r in reductions:
            for name in layers:
                out[r][name].append(fns[r](feats[name]).float().cpu())
    return {r: {name: torch.cat(parts) for name, parts in by_layer.items()} for r, by_layer in out.items()}


# ----------------------------------------------------------------------------------- fitting
def fit_supervised(model, examples: FittingExamples, protocol: FitProtocol, *, metrics=SUPERVISED_METRICS,
                   gaussian_images=None, gaussian_labels=None, num_classes: Optional[int] = None,
                   batch_size: int = 500, device=None) -> dict:
    """{Metric: fitted LIDDetector / MahalanobisDetector} on the fitting examples (see the module docstring).

    Mahalanobis-LR needs `gaussian_images` / `gaussian_labels` (training images and true labels).
    """
    metrics = [Metric.coerce(m, "metric") for m in metrics]
    unknown = [m for m in metrics if m not in SUPERVISED_METRICS]
    if unknown:
        raise InputError(f"fit_supervised fits {', '.join(SUPERVISED_METRICS)}, not {', '.join(unknown)}")
    layers = default_layers(model)
    num_classes = num_classes or getattr(model, "num_classes", None)
    sets = [layer_features(model, x, layers, batch_size=batch_size, device=device)
            for x in (examples.clean, examples.noisy, examples.adversarial)]
    fitted = {}
    if Metric.LID in metrics:
        fitted[Metric.LID] = LIDDetector(k=protocol.k, batch_size=protocol.lid_batch_size, seed=protocol.seed).fit(
            *(s["flatten"] for s in sets))
    if Metric.MAHALANOBIS_LR in metrics:
        if gaussian_images is None or gaussian_labels is None:
            raise InputError("Mahalanobis-LR needs training images and labels for its class Gaussians "
                             "(gaussian_images=, gaussian_labels=)")
        train = layer_features(model, gaussian_images, layers, reductions=("mean",), batch_size=batch_size,
                               device=device)["mean"]
        det = MahalanobisDetector(magnitude=protocol.magnitude, seed=protocol.seed).fit_gaussians(
            train, gaussian_labels, num_classes=num_classes)
        if protocol.magnitude == 0.0:
            scores = [det.layer_scores(s["mean"]) for s in sets]
        else:
            scores = [_preprocessed_scores(model, det, x, batch_size=batch_size, device=device)
                      for x in (examples.clean, examples.noisy, examples.adversarial)]
        fitted[Metric.MAHALANOBIS_LR] = det.fit_regression(*scores)
    return fitted


def _preprocessed_scores(model, det: MahalanobisDetector, images, *, batch_size, device) -> torch.Tensor:
    device = device or next(model.parameters()).device
    taps = LayerTaps(model, det.layers_, reduce="mean")
    parts = [det.layer_scores_of_inputs(taps, _as_float(images[s:s + batch_size]).to(device)).cpu()
             for s in range(0, images.shape[0], batch_size)]
    return torch.cat(parts)


# ----------------------------------------------------------------------------------- scoring
def baseline_inputs(model, fitted: dict, images, *, batch_size: int = 500, device=None):
    """({Metric: what `fitted[metric].score` takes, on the CPU}, logits (N, L) float32 CPU) of `images`.

    `fitted`: {Metric: fitted LIDDetector (-> (N, L) LID characteristics against its reference),
    MahalanobisDetector (-> (N, L) layer scores) or MahalanobisMetric (-> (N, d) penultimate
    features)}. One forward pass per batch unless a Mahalanobis detector preprocesses its inputs.
    """
    fitted = {Metric.coerce(m, "metric"): obj for m, obj in fitted.items()}
    penultimate = default_layers(model)[-1]
    layers = []
    for metric, obj in fitted.items():
        if isinstance(obj, (LIDDetector, MahalanobisDetector)):
            layers += obj.layers_
        elif isinstance(obj, MahalanobisMetric):
            layers.append(penultimate)
        else:
            raise InputError(f"baseline_inputs scores LID and Mahalanobis detectors, not {type(obj).__name__}")
    layers = list(dict.fromkeys(layers))
    parts = {m: [] for m in fitted}
    logits = []
    for batch, out, feats in _batches(model, images, layers, batch_size=batch_size, device=device):
        logits.append(out.float().cpu())
        for metric, obj in fitted.items():
            if isinstance(obj, LIDDetector):
                parts[metric].append(obj.characteristics({n: _flatten(feats[n]) for n in obj.layers_}))
            elif isinstance(obj, MahalanobisMetric):
                parts[metric].append(_mean(feats[penultimate]).float().cpu())
            elif obj.magnitude == 0.0:
                parts[metric].append(obj.layer_scores({n: _mean(feats[n]) for n in obj.layers_}).cpu())
            else:
                with torch.enable_grad():
                    taps = LayerTaps(model, obj.layers_, reduce="mean")
                    parts[metric].append(obj.layer_scores_of_inputs(taps, batch).cpu())
                model.eval()  # layer_scores_of_inputs restores the mode it found: eval, as here
    if not logits:
        raise InputError("baseline_inputs got zero images")
    return {m: torch.cat(p) for m, p in parts.items()}, torch.cat(logits)


__all__ = ["DEFAULT_FIT_EPS", "FIT_ATTACKS", "FitProtocol", "FittingExamples", "baseline_inputs",
           "fit_supervised", "fitting_examples", "fitting_indices", "layer_features", "matched_noise"]
