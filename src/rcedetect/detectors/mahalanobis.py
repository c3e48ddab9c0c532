"""Mahalanobis-distance detector of Lee et al., NeurIPS 2018, "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks". Reference code: pokaxpoka/deep_Mahalanobis_detector.

Per layer l, class-conditional Gaussians with a tied covariance fitted on training features of the
true classes (`lib_generation.py` `sample_estimator`): class means μ_c and one covariance Σ, the
scikit-learn `EmpiricalCovariance(assume_centered=False)` of all features centred on their class mean
(maximum likelihood, divisor N), precision Σ⁺ its (pseudo-)inverse `precision_`. Features are
spatially averaged activations, (N, C) (`LayerTaps(..., reduce="mean")`). The score is the
closest-class Gaussian log-likelihood without constants, as in `get_Mahalanobis_score_adv`:

    M(x) = max_c -1/2 (f(x) - μ_c)ᵀ Σ⁺ (f(x) - μ_c)        (the paper writes it without the 1/2)

Input preprocessing (the paper's Eq. 4, `get_Mahalanobis_score_adv`): with ĉ the closest class of the
clean input, x̂ = x - ε · sign(∇ₓ 1/2 (f(x) - μ_ĉ)ᵀ Σ⁺ (f(x) - μ_ĉ)), i.e. a signed-gradient step that
*increases* the closest-class Gaussian score, then M(x̂). Their sign is `torch.ge(grad, 0)` mapped to
±1, so a zero gradient steps by +ε (we keep that), and they neither clip x̂ (we do not either). They
divide the step by the per-channel std of their input normalisation because their inputs are
normalised; ours are [0, 1] pixels (the model normalises inside), so the step is ε in pixel space.
Noise magnitudes searched: `MAGNITUDES` = (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)
(`ADV_Generate_LID_Mahalanobis.py` `m_list`), the best chosen by validation AUROC (`ADV_Regression.py`).
Each layer gets its own preprocessing step (the gradient of that layer's score).

Two forms:
  * `MahalanobisMetric` - unsupervised, one layer (the penultimate features, `ModelOutput.features`),
    no regression: a plain metric for `ThresholdDetector`, fitted on training features and labels and
    thresholded on clean data like confidence / K-density.
  * `MahalanobisDetector` - supervised: the per-layer scores (L columns) combined by a
    `LogisticRegressionCV` on unscaled scores, labels adversarial = 1, clean and noisy = 0
    (`ADV_Regression.py`, `lib_generation.py` `merge_and_generate_labels`).

Score convention: higher = more normal (M itself; for the supervised form, -(logit of adversarial)).
"""

import torch

from ..errors import InputError
from ..models import ModelOutput
from .kernel_density import _features, per_class_subset
from .lid import HEAD_KEYS, fit_logistic, indexed_layer_tensors, layers_from_tensors, logistic_logit
from .taps import LayerTaps, as_layer_features

MAGNITUDES = (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)


# ----------------------------------------------------------------------------- the Gaussians
def class_means_and_covariance(features, labels, num_classes=None):
    """Class means (C, d), tied covariance (d, d) and precision (d, d), float64 CPU tensors.

    The covariance is scikit-learn's `EmpiricalCovariance(assume_centered=False)` of the features centred
    on their class means, its precision `precision_` (a pseudo-inverse), as Lee et al.'s `sample_estimator`.
    """
    from sklearn.covariance import EmpiricalCovariance

    f = _features(features).detach().double().cpu()
    y = torch.as_tensor(labels).long().cpu()
    if y.shape != (f.shape[0],):
        raise InputError(f"labels of shape {tuple(y.shape)} do not match {f.shape[0]} feature rows")
    if y.numel() == 0 or int(y.min()) < 0:
        raise InputError("labels must be non-empty class indices >= 0")
    num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.max()) >= num_classes:
        raise InputError(f"label {int(y.max())} out of range for {num_classes} classes")
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts == 0).any()):
        raise InputError(f"classes {(counts == 0).nonzero().squeeze(1).tolist()} have no training examples: "
                         f"the Mahalanobis detector needs a mean for every class")
    means = torch.zeros(num_classes, f.shape[1], dtype=torch.float64).index_add_(0, y, f) / counts[:, None]
    estimator = EmpiricalCovariance(assume_centered=False).fit((f - means[y]).numpy())
    return (means, torch.as_tensor(estimator.covariance_, dtype=torch.float64),
            torch.as_tensor(estimator.precision_, dtype=torch.float64))


def gaussian_scores(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """-1/2 (f - μ_c)ᵀ Σ⁺ (f - μ_c) for every row and class, (N, C), returned in the dtype/device of
    `features` (differentiable w.r.t. the features).

    Computed in float64 whatever the features' dtype: an ill-conditioned layer covariance (measured: the
    stem of the quick MNIST ResNet-32, whose background pixels are constant) has precision entries so
    large that the float32 quadratic form cancels catastrophically, even to positive values of -1/2 d².
    """
    if features.dim() != 2 or features.shape[1] != means.shape[1]:
        raise InputError(f"expected features of shape (N, {means.shape[1]}), got {tuple(features.shape)}")
    f = features.double()
    means = means.to(device=features.device, dtype=torch.float64)
    precision = precision.to(device=features.device, dtype=torch.float64)
    diff = f.unsqueeze(1) - means.unsqueeze(0)                            # (N, C, d)
    return (-0.5 * ((diff @ precision) * diff).sum(dim=2)).to(features.dtype)


def preprocess_inputs(feature_fn, x: torch.Tensor, means, precision, *, magnitude: float) -> torch.Tensor:
    """Lee et al.'s input preprocessing: x - magnitude * sign≥(∇ₓ 1/2 d²_ĉ(x)), detached.

    `feature_fn(x) -> (N, d)` is the differentiable feature map of the layer (e.g. a `LayerTaps` call);
    ĉ is each input's closest class. The per-input losses are summed (not averaged as in their code:
    the same signs, without a 1/N that could underflow a gradient to 0). Model parameters get no `.grad`.
    """
    if not magnitude >= 0:
        raise InputError(f"magnitude must be >= 0, got {magnitude}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = gaussian_scores(feature_fn(x), means, precision)
        closest = scores.detach().argmax(dim=1, keepdim=True)
        loss = -scores.gather(1, closest).sum()
        (grad,) = torch.autograd.grad(loss, x)
    step = torch.where(grad >= 0, 1.0, -1.0).to(x.dtype)
    return (x - magnitude * step).detach()


# ------------------------------------------------------------------ unsupervised, one layer
class MahalanobisMetric:
    """Closest-class Mahalanobis score on one layer's features, a plain thresholding metric.

    `fit(model_output_or_features (N, d), labels)` estimates the class means and tied covariance (on all
    the rows given: Lee et al. use the whole training set); `score(model_output)` is M on
    `ModelOutput.features` (or an (N, d) tensor), (N,), higher = more normal, differentiable.
    Args (keyword-only): n_per_class, seed -- which training rows `subset_indices` selects for callers
    that compute features first (None: all of them, Lee et al.'s choice; else the K-density bank's
    seeded per-class rule, so `rcedetect detect` fits on the bank's images).
    Fitted state: `means_` (C, d), `covariance_` (d, d), `precision_` (d, d), float64 CPU.
    """

    name = "mahalanobis"
    requires_fit = True

    def __init__(self, *, n_per_class=None, seed: int = 0):
        if n_per_class is not None and (not isinstance(n_per_class, int) or n_per_class < 2):
            raise InputError(f"n_per_class must be an int >= 2 or None (every training example), got {n_per_class!r}")
        self.n_per_class = n_per_class
        self.seed = seed

    def subset_indices(self, y, num_classes=None) -> torch.Tensor:
        """Training indices to fit on: every example (n_per_class None, Lee et al.'s choice), else per class
        a seeded random `n_per_class` subset by the K-density bank's rule (the same images for the same
        n_per_class and seed); every class must occur."""
        y = torch.as_tensor(y).long().cpu()
        if self.n_per_class is None:
            per_class_subset(y, 1, self.seed, num_classes, "the Mahalanobis detector needs every class")  # checks
            return torch.arange(y.numel())
        return per_class_subset(y, self.n_per_class, self.seed, num_classes,
                                "the Mahalanobis detector needs every class")

    def fit(self, model_output, y, *, num_classes=None) -> "MahalanobisMetric":
        if isinstance(model_output, ModelOutput) and num_classes is None:
            num_classes = model_output.logits.shape[1]
        self.means_, self.covariance_, self.precision_ = class_means_and_covariance(model_output, y, num_classes)
        return self

    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise InputError("this MahalanobisMetric is not fitted: call fit(train_output, train_labels) first")

    def class_scores(self, model_output) -> torch.Tensor:
        """-1/2 d²_c for every class, (N, C)."""
        self._check_fitted()
        return gaussian_scores(_features(model_output), self.means_, self.precision_)

    def score(self, model_output) -> torch.Tensor:
        """M(x) = max_c -1/2 d²_c, (N,), higher = more normal."""
        return self.class_scores(model_output).max(dim=1).values

    score_samples = score

    def preprocess(self, model, x: torch.Tensor, *, magnitude: float) -> torch.Tensor:
        """Lee et al.'s preprocessing of `x` for the penultimate features of `model.forward_features`."""
        self._check_fitted()
        return preprocess_inputs(lambda v: model.forward_features(v).features, x, self.means_, self.precision_,
                                 magnitude=magnitude)

    def params(self) -> dict:
        return {"n_per_class": self.n_per_class, "seed": self.seed}

    def state_tensors(self) -> dict:
        self._check_fitted()
        return {"means": self.means_, "covariance": self.covariance_, "precision": self.precision_}

    @classmethod
    def from_state(cls, params: dict, tensors: dict) -> "MahalanobisMetric":
        metric = cls(**params)
        metric.means_ = tensors["means"].double()
        metric.covariance_ = tensors["covariance"].double()
        metric.precision_ = tensors["precision"].double()
        d = metric.means_.shape[1]
        if metric.precision_.shape != (d, d) or metric.covariance_.shape != (d, d):
            raise InputError("stored Mahalanobis means and precision disagree in dimension: refit the detector")
        return metric

    def __repr__(self) -> str:
        return f"MahalanobisMetric(n_per_class={self.n_per_class}, seed={self.seed})"


# ---------------------------------------------------------------- supervised, several layers
class MahalanobisDetector:
    """Lee et al. 2018's supervised detector: closest-class scores of several layers + logistic regression.

    Args (keyword-only):
        magnitude: ε of the input preprocessing (one of `MAGNITUDES` in the paper); 0 = none.
        Cs, cv, max_iter: of the `LogisticRegressionCV` (authors: scikit-learn defaults Cs=10, 5 folds).
        seed: the regression's CV seed.

    Fitting in two steps, because the scores of the regression's training inputs need the Gaussians:
        det = MahalanobisDetector(magnitude=0.0014).fit_gaussians(train_feats, train_labels)
        with LayerTaps(model, det.layers_) as taps:
            clean, adv = det.layer_scores_of_inputs(taps, x_clean), det.layer_scores_of_inputs(taps, x_adv)
        det.fit_regression(clean, None, adv)
    or in one call on features when there is no preprocessing: `fit(train_feats, train_labels, clean=...,
    adversarial=..., noisy=...)`. Features: {layer: (N, C_l)} spatial means (`LayerTaps(reduce="mean")`).

    Fitted state: `layers_`, `gaussians_` ({layer: fitted `MahalanobisMetric`}), `head_` (logistic
    regression as tensors, see `lid.fit_logistic`). `score_samples(x)`, higher = more normal, takes
    (N, L) layer scores or features (the latter only with magnitude 0: preprocessing needs the inputs).
    """

    name = "mahalanobis-lr"
    requires_fit = False  # not by ThresholdDetector.fit(train_output, labels): fitting needs adversarial data
    requires_adversarial = True

    def __init__(self, *, magnitude: float = 0.0, Cs=10, cv=5, max_iter: int = 1000, seed: int = 0):
        if not magnitude >= 0:
            raise InputError(f"magnitude must be >= 0, got {magnitude}")
        self.magnitude = float(magnitude)
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.seed = seed

    def fit_gaussians(self, features, labels, *, num_classes=None) -> "MahalanobisDetector":
        """Class means and tied covariance of every layer of training `features` with true `labels`."""
        features = as_layer_features(features, "training features")
        self.gaussians_ = {name: MahalanobisMetric().fit(value, labels, num_classes=num_classes)
                           for name, value in features.items()}
        self.layers_ = list(features)
        if hasattr(self, "head_"):
            del self.head_  # a regression fitted on other Gaussians' scores is no longer valid
        return self

    def _check_gaussians(self):
        if not hasattr(self, "gaussians_"):
            raise InputError("this MahalanobisDetector has no Gaussians: call fit_gaussians(features, labels) first")

    def layer_scores(self, features) -> torch.Tensor:
        """M_l of each input on every layer without preprocessing, (N, L) in the features' dtype."""
        self._check_gaussians()
        features = as_layer_features(features)
        missing = [name for name in self.layers_ if name not in features]
        if missing:
            raise InputError(f"features lack layers {missing}: tap the layers {self.layers_}")
        return torch.stack([self.gaussians_[name].score(features[name]) for name in self.layers_], dim=1)

    def layer_scores_of_inputs(self, taps: LayerTaps, x: torch.Tensor) -> torch.Tensor:
        """M_l(x̂_l) on every layer, each layer with its own preprocessing step of `magnitude`, (N, L),
        detached. `taps`: `LayerTaps` of the model on (at least) `layers_` with reduce="mean"; the model
        is put in eval mode for the call."""
        self._check_gaussians()
        if not isinstance(taps, LayerTaps) or taps.reduce != "mean":
            raise InputError("layer_scores_of_inputs needs LayerTaps(model, layers, reduce='mean')")
        missing = [name for name in self.layers_ if name not in taps.layers]
        if missing:
            raise InputError(f"the taps lack layers {missing}: tap {self.layers_}")
        model = taps.model
        was_training = model.training
        model.eval()
        try:
            if self.magnitude == 0.0:
                with torch.no_grad():
                    return self.layer_scores(taps(x).features)
            columns = []
            for name in self.layers_:
                g = self.gaussians_[name]
                x_hat = preprocess_inputs(lambda v: taps(v).features[name], x, g.means_, g.precision_,
                                          magnitude=self.magnitude)
                with torch.no_grad():
                    columns.append(g.score(taps(x_hat).features[name]))
            return torch.stack(columns, dim=1)
        finally:
            model.train(was_training)

    def _as_layer_scores(self, x, what: str) -> torch.Tensor:
        if torch.is_tensor(x):
            if x.dim() != 2 or x.shape[1] != len(self.layers_):
                raise InputError(f"{what}: expected layer scores of shape (N, {len(self.layers_)}), "
                                 f"got {tuple(x.shape)}")
            return x
        if self.magnitude != 0.0:
            raise InputError(f"{what}: with magnitude {self.magnitude:g} the scores need the inputs: "
                             f"pass layer_scores_of_inputs(taps, x), not features")
        return self.layer_scores(x)

    def fit_regression(self, clean, noisy=None, adversarial=None) -> "MahalanobisDetector":
        """Fit the logistic regression on (N, L) layer scores (or features, magnitude 0) of clean,
        noisy (optional) and adversarial inputs, the argument order of `LIDDetector.fit`; returns self."""
        self._check_gaussians()
        if adversarial is None:
            raise InputError("fit_regression needs adversarial scores: fit_regression(clean, noisy, adversarial)")
        sets = [self._as_layer_scores(clean, "clean")]
        if noisy is not None:
            sets.append(self._as_layer_scores(noisy, "noisy"))
        sets.append(self._as_layer_scores(adversarial, "adversarial"))
        labels = torch.cat([torch.zeros(s.shape[0]) for s in sets[:-1]] + [torch.ones(sets[-1].shape[0])])
        X = torch.cat([s.detach().double().cpu() for s in sets])
        self.head_ = fit_logistic(X, labels, minmax_scale=False, Cs=self.Cs, cv=self.cv,
                                  max_iter=self.max_iter, seed=self.seed)
        return self

    def fit(self, features, labels, *, clean, adversarial, noisy=None, num_classes=None) -> "MahalanobisDetector":
        """`fit_gaussians(features, labels)` then `fit_regression(clean, noisy, adversarial)`."""
        return self.fit_gaussians(features, labels, num_classes=num_classes).fit_regression(
            clean, noisy, adversarial)

    def _check_fitted(self):
        if not hasattr(self, "head_"):
            raise InputError("this MahalanobisDetector is not fitted: call fit(...) "
                             "(or fit_gaussians then fit_regression) first")

    def score_samples(self, x) -> torch.Tensor:
        """-(logit of adversarial), (N,), higher = more normal; `x`: (N, L) layer scores or features."""
        self._check_fitted()
        return -logistic_logit(self._as_layer_scores(x, "x"), self.head_)

    score = score_samples

    def predict_proba(self, x) -> torch.Tensor:
        """Probability of "adversarial" per input, (N,)."""
        return torch.sigmoid(-self.score_samples(x))

    # ------------------------------------------------------------------------------- persistence
    def params(self) -> dict:
        return {"magnitude": self.magnitude, "Cs": self.Cs, "cv": self.cv, "max_iter": self.max_iter,
                "seed": self.seed}

    def state_tensors(self) -> dict:
        """Head and per-layer Gaussians; layer names travel in the keys (`lid.indexed_layer_tensors`)."""
        self._check_fitted()
        tensors = {f"head.{key}": self.head_[key] for key in HEAD_KEYS}
        for field in ("means", "precision"):
            tensors.update(indexed_layer_tensors(
                field, self.layers_, {n: getattr(self.gaussians_[n], f"{field}_") for n in self.layers_}))
        return tensors

    @classmethod
    def from_state(cls, params: dict, tensors: dict) -> "MahalanobisDetector":
        detector = cls(**params)
        layers, means = layers_from_tensors("means", tensors)
        layers_p, precisions = layers_from_tensors("precision", tensors)
        if layers != layers_p:
            raise InputError("stored Mahalanobis means and precisions name different layers: refit the detector")
        detector.gaussians_ = {}
        for name in layers:
            g = MahalanobisMetric()
            g.means_, g.precision_ = means[name].double(), precisions[name].double()
            g.covariance_ = torch.linalg.pinv(g.precision_, hermitian=True)
            detector.gaussians_[name] = g
        detector.head_ = {key: tensors[f"head.{key}"].double() for key in HEAD_KEYS}
        if detector.head_["coef"].numel() != len(layers):
            raise InputError("stored Mahalanobis regression and layer list disagree: refit the detector")
        detector.layers_ = layers
        return detector

    def __repr__(self) -> str:
        fitted = f", layers_={self.layers_}" if hasattr(self, "layers_") else ""
        return f"MahalanobisDetector(magnitude={self.magnitude:g}{fitted})"


__all__ = ["MAGNITUDES", "class_means_and_covariance", "gaussian_scores", "preprocess_inputs",
           "MahalanobisMetric", "MahalanobisDetector"]
