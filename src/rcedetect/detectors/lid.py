"""Local intrinsic dimensionality (LID) detector of Ma et al., ICLR 2018, "Characterizing adversarial
subspaces using local intrinsic dimensionality", on tensors the caller brings (see `taps`).

Estimator (the paper's Eq. 4, maximum likelihood over the k nearest neighbours):

    LID(x) = -( 1/k Σ_{i=1..k} log(r_i(x) / r_k(x)) )^{-1}  =  -k / Σ_i log(r_i / r_k)

with r_1 <= ... <= r_k the Euclidean distances from x to its k nearest points of a *minibatch of clean
reference points*, one estimate per layer. Reference code: xingjunm/lid_adversarial_subspace_detection.

Choices followed from that repository:
  * k = 20 (`extract_characteristics.py`, argparse default) and minibatches of 100 consecutive inputs
    (`util.py` `get_lids_random_batch`); the reference points of a minibatch are its clean inputs, and
    `k` shrinks to (points available) like `mle_batch` when a minibatch is small.
  * `mle_batch` sorts the distances and keeps ranks 1..k, i.e. it always drops the nearest point:
    for clean queries that is the point itself (distance 0); for noisy and adversarial queries it drops
    the nearest clean point, in their aligned minibatches usually the query's own clean original. We do
    the same in `minibatch_lids` (`drop_nearest=True`). When scoring new inputs against the stored clean
    reference minibatch (`LIDDetector.characteristics`) nothing is dropped: the reference contains neither
    the query nor its origin, which is what both drops emulate.
  * Features: every layer's activation *flattened* (`util.py` `get_layer_wise_activations`, the input
    included); with `LayerTaps(..., reduce="flatten")` and the layer ":input". Lee et al.'s re-use
    (deep_Mahalanobis_detector `lib_generation.py` `get_LID`) spatially averages instead ("mean").
  * Labels adversarial = 1, clean and noisy = 0 (`merge_and_generate_labels`); the characteristics are
    min-max scaled (`detect_adv_examples.py`: `MinMaxScaler().fit(X)`, fitted there on all data before
    the split; we fit it on the training characteristics only) and a `LogisticRegressionCV` (default
    grid, L2, lbfgs; `util.py` `train_lr`) is fitted on them.

Shapes: per-layer features {layer: (N, D_l)}; characteristics (N, L) float64, one column per layer in
the order of the fitted layers. Score convention (scikit-learn's `score_samples`): higher = more
normal, score = -(logistic-regression logit of "adversarial"). LID scores are not differentiable (the
k-nearest-neighbour ranks are computed detached, in float64). Fitted state is plain tensors (the
logistic regression is kept as coefficients, never pickled; layer names travel in the tensor keys):
see `state_tensors` / `from_state`, which the existing safetensors + JSON persistence can store.
"""

import inspect

import numpy as np
import torch

from ..errors import InputError
from .taps import as_layer_features

DEFAULT_K = 20
DEFAULT_BATCH_SIZE = 100


# -------------------------------------------------------------------------------- estimator
def lid_mle(queries, reference, *, k: int = DEFAULT_K, drop_nearest: bool = False,
            differentiable: bool = False) -> torch.Tensor:
    """Maximum-likelihood LID of each query against `reference`, float64 (N,).

    `queries` (N, D) and `reference` (M, D) (more dimensions are flattened). `drop_nearest` skips each
    query's nearest reference point (the point itself when `queries` is `reference`). `k` shrinks to the
    points available (M, or M - 1 when dropping); fewer than 2 is an InputError. Distances are exact
    (no ||a||² + ||b||² - 2ab expansion) and in float64. Coincident neighbours give LID 0 (a zero r_i)
    or NaN (r_k = 0), as the formula does. `differentiable`: keep the queries' autograd graph (the
    k nearest are still chosen by value; the gradient flows through their distances), for white-box
    attacks on LID (`detectors.attackable`).
    """
    q = torch.as_tensor(queries)
    q = (q if differentiable else q.detach()).double()
    r = torch.as_tensor(reference).detach().double().to(q.device)
    q, r = q.reshape(q.shape[0], -1), r.reshape(r.shape[0], -1)
    if q.shape[1] != r.shape[1]:
        raise InputError(f"queries have dimension {q.shape[1]}, the reference {r.shape[1]}")
    if not isinstance(k, int) or k < 2:
        raise InputError(f"k must be an int >= 2, got {k!r}")
    drop = int(bool(drop_nearest))
    k_eff = min(k, r.shape[0] - drop)
    if k_eff < 2:
        raise InputError(f"LID needs at least {2 + drop} reference points, got {r.shape[0]}: use a larger minibatch")
    if q.shape[0] == 0:
        return q.new_zeros(0)
    distances = torch.cdist(q, r, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.topk(k_eff + drop, dim=1, largest=False, sorted=True).values[:, drop:]
    return -k_eff / torch.log(nearest / nearest[:, -1:]).sum(dim=1)


def _layers_of(features: dict, layers, what: str) -> list:
    """The (N, D) tensors of `features` for `layers`, in that order."""
    missing = [name for name in layers if name not in features]
    if missing:
        raise InputError(f"{what} lacks layers {missing}: tap the layers the detector was fitted on {list(layers)}")
    return [features[name] for name in layers]


def minibatch_lids(clean, *others, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH_SIZE):
    """Ma et al.'s characteristics: per minibatch of `batch_size` consecutive rows, the LID of each clean
    row (itself dropped) and of the aligned rows of each of `others` (nearest dropped) against that
    minibatch's clean rows, for every layer.

    `clean` and each of `others`: {layer: (N, D_l)} dicts (or `TappedOutput`s) with the same layers and
    rows aligned (row i of each is the same image: clean, noisy, adversarial). Returns one float64
    (N, L) tensor per argument, columns in `clean`'s layer order.
    """
    if not isinstance(batch_size, int) or batch_size < 3:
        raise InputError(f"batch_size must be an int >= 3, got {batch_size!r}")
    clean = as_layer_features(clean, "clean")
    layers = list(clean)
    sets = [[v for v in clean.values()]] + [_layers_of(as_layer_features(o, "others"), layers, "others")
                                            for o in others]
    n = sets[0][0].shape[0]
    if any(s[0].shape[0] != n for s in sets):
        raise InputError(f"clean, noisy and adversarial features must have the same rows (aligned), "
                         f"got {[s[0].shape[0] for s in sets]}")
    out = [torch.empty(n, len(layers), dtype=torch.float64) for _ in sets]
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        for j in range(len(layers)):
            reference = sets[0][j][start:stop]
            for result, s in zip(out, sets):
                result[start:stop, j] = lid_mle(s[j][start:stop], reference, k=k, drop_nearest=True).cpu()
    return tuple(out)


# --------------------------------------------------------------- logistic regression, as tensors
def _logistic_regression_cv(*, Cs, cv, max_iter, seed):
    """`LogisticRegressionCV` with the historic defaults (L2, accuracy) across scikit-learn versions,
    spelled so that versions >= 1.8 do not warn about their changing defaults."""
    from sklearn.linear_model import LogisticRegressionCV

    kwargs = {"Cs": Cs, "cv": cv, "max_iter": max_iter, "random_state": seed, "scoring": "accuracy"}
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
        kwargs.update(l1_ratios=(0.0,), use_legacy_attributes=False)
    return LogisticRegressionCV(**kwargs)


def fit_logistic(characteristics, is_adversarial, *, minmax_scale: bool, Cs=10, cv=5, max_iter=1000,
                 seed=0) -> dict:
    """Fit the detectors' logistic regression on (n, L) characteristics, labels 1 = adversarial.

    Returns plain float64 CPU tensors {"shift" (L,), "scale" (L,), "coef" (L,), "intercept" (1,),
    "C" (1,)}: the logit is ((X - shift) / scale) @ coef + intercept (see `logistic_logit`). With
    `minmax_scale` shift/scale are scikit-learn's MinMaxScaler (a constant column keeps scale 1),
    else 0 / 1. Used by `LIDDetector` and `MahalanobisDetector`.
    """
    X = torch.as_tensor(characteristics).detach().double().cpu().numpy()
    y = torch.as_tensor(is_adversarial).detach().cpu().numpy().astype(np.int64).ravel()
    if X.ndim != 2 or X.shape[0] != y.size:
        raise InputError(f"characteristics of shape {X.shape} do not match {y.size} labels")
    if not np.isfinite(X).all():
        raise InputError("characteristics contain NaN or inf (e.g. LID of duplicate points): "
                         "drop duplicate inputs or use a larger minibatch")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise InputError("the logistic regression needs both normal (0) and adversarial (1) examples")
    if minmax_scale:
        shift = X.min(axis=0)
        scale = X.max(axis=0) - shift
        scale[scale == 0.0] = 1.0
    else:
        shift, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    lr = _logistic_regression_cv(Cs=Cs, cv=cv, max_iter=max_iter, seed=seed)
    lr.fit((X - shift) / scale, y)

    def as_tensor(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float64).ravel())

    return {"shift": as_tensor(shift), "scale": as_tensor(scale), "coef": as_tensor(lr.coef_),
            "intercept": as_tensor(lr.intercept_), "C": as_tensor(np.ravel(lr.C_)[:1])}


def logistic_logit(characteristics: torch.Tensor, head: dict) -> torch.Tensor:
    """The fitted logit of "adversarial", (N,), in the dtype/device of `characteristics` (differentiable)."""
    X = characteristics
    p = {k: head[k].to(device=X.device, dtype=X.dtype) for k in ("shift", "scale", "coef", "intercept")}
    if X.dim() != 2 or X.shape[1] != p["coef"].numel():
        raise InputError(f"expected characteristics of shape (N, {p['coef'].numel()}), got {tuple(X.shape)}")
    return ((X - p["shift"]) / p["scale"]) @ p["coef"] + p["intercept"]


HEAD_KEYS = ("shift", "scale", "coef", "intercept", "C")


def indexed_layer_tensors(field: str, layers, tensors: dict) -> dict:
    """{"<field>.<i>.<layer name>": tensor}: safetensors keys that keep the layer names and their order,
    so fitted detectors round-trip through `state_tensors` / `from_state` with no extra JSON."""
    return {f"{field}.{i}.{name}": tensors[name] for i, name in enumerate(layers)}


def layers_from_tensors(field: str, tensors: dict):
    """Inverse of `indexed_layer_tensors`: (layer names in order, {layer: tensor})."""
    found = {}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        if head == field and index.isdigit():
            found[int(index)] = (name, value)
    if sorted(found) != list(range(len(found))) or not found:
        raise InputError(f"stored detector tensors have no complete '{field}' layers: refit the detector")
    layers = [found[i][0] for i in range(len(found))]
    return layers, {name: value for name, value in (found[i] for i in range(len(found)))}


# --------------------------------------------------------------------------------- detector
class LIDDetector:
    """Ma et al. 2018's LID detector: per-layer LID characteristics + logistic regression.

    Args (keyword-only):
        k: neighbours of the LID estimate. Default 20 (the authors').
        batch_size: minibatch size, the clean reference set of each estimate. Default 100 (the authors').
        Cs, cv, max_iter: of the `LogisticRegressionCV` (authors: scikit-learn defaults Cs=10, 5 folds).
        seed: seed of the reference subset kept for scoring new inputs (and of the regression's CV).

    `fit(clean, noisy, adversarial)` takes aligned per-layer features ({layer: (N, D)} dicts or
    `TappedOutput`s; `noisy` may be None) and fits the regression on `minibatch_lids` of all three.
    Fitted state: `layers_` (names, column order), `head_` (logistic regression as tensors, see
    `fit_logistic`), `reference_` ({layer: (batch_size, D)}: a seeded random subset of the clean rows,
    the reference minibatch for inputs scored later).

    `score_samples(x)` (higher = more normal) takes either features of new inputs (LID against
    `reference_`) or precomputed (N, L) characteristics (e.g. from `minibatch_lids`, the authors'
    evaluation on aligned test minibatches). `ThresholdDetector` does not fit this detector (fitting
    needs adversarial examples): fit it first, then `ThresholdDetector(lid).fit(calibration=clean)`.
    """

    name = "lid"
    requires_fit = False  # not by ThresholdDetector.fit(train_output, labels): see the class docstring
    requires_adversarial = True

    def __init__(self, *, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH_SIZE, Cs=10, cv=5,
                 max_iter: int = 1000, seed: int = 0):
        if not isinstance(k, int) or k < 2:
            raise InputError(f"k must be an int >= 2, got {k!r}")
        if not isinstance(batch_size, int) or batch_size <= k:
            raise InputError(f"batch_size must be an int larger than k={k}, got {batch_size!r}")
        self.k = k
        self.batch_size = batch_size
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, clean, noisy=None, adversarial=None) -> "LIDDetector":
        """Fit on aligned clean / noisy (optional) / adversarial per-layer features; returns self."""
        if adversarial is None:
            raise InputError("LIDDetector.fit needs adversarial features: fit(clean, noisy, adversarial)")
        clean = as_layer_features(clean, "clean")
        layers = list(clean)
        sets = [clean] + ([] if noisy is None else [noisy]) + [adversarial]
        lids = minibatch_lids(*sets, k=self.k, batch_size=self.batch_size)
        labels = torch.cat([torch.zeros(t.shape[0]) for t in lids[:-1]] + [torch.ones(lids[-1].shape[0])])
        self.head_ = fit_logistic(torch.cat(lids), labels, minmax_scale=True, Cs=self.Cs, cv=self.cv,
                                  max_iter=self.max_iter, seed=self.seed)
        n = clean[layers[0]].shape[0]
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:self.batch_size].sort().values
        self.reference_ = {name: clean[name].detach()[keep.to(clean[name].device)].float().cpu().clone()
                           for name in layers}
        self.layers_ = layers
        return self

    def _check_fitted(self):
        if not hasattr(self, "head_"):
            raise InputError("this LIDDetector is not fitted: call fit(clean, noisy, adversarial) first")

    def characteristics(self, features) -> torch.Tensor:
        """LID of new inputs against the stored clean reference minibatch, float64 (N, L)."""
        self._check_fitted()
        features = as_layer_features(features)
        columns = [lid_mle(f, self.reference_[name], k=self.k).cpu()
                   for name, f in zip(self.layers_, _layers_of(features, self.layers_, "features"))]
        return torch.stack(columns, dim=1)

    def score_samples(self, x) -> torch.Tensor:
        """-(logit of adversarial), (N,), higher = more normal; `x`: features or (N, L) characteristics."""
        self._check_fitted()
        lids = x if torch.is_tensor(x) else self.characteristics(x)
        return -logistic_logit(lids, self.head_)

    score = score_samples

    def predict_proba(self, x) -> torch.Tensor:
        """Probability of "adversarial" per input, (N,)."""
        return torch.sigmoid(-self.score_samples(x))

    # ------------------------------------------------------------------------------- persistence
    def params(self) -> dict:
        return {"k": self.k, "batch_size": self.batch_size, "Cs": self.Cs, "cv": self.cv,
                "max_iter": self.max_iter, "seed": self.seed}

    def state_tensors(self) -> dict:
        """The head and the reference minibatch; layer names travel in the keys (`indexed_layer_tensors`)."""
        self._check_fitted()
        tensors = {f"head.{key}": self.head_[key] for key in HEAD_KEYS}
        tensors.update(indexed_layer_tensors("reference", self.layers_, self.reference_))
        return tensors

    @classmethod
    def from_state(cls, params: dict, tensors: dict) -> "LIDDetector":
        detector = cls(**params)
        layers, reference = layers_from_tensors("reference", tensors)
        detector.head_ = {key: tensors[f"head.{key}"].double() for key in HEAD_KEYS}
        if detector.head_["coef"].numel() != len(layers):
            raise InputError("stored LID regression and reference layers disagree: refit the detector")
        detector.layers_, detector.reference_ = layers, reference
        return detector

    def __repr__(self) -> str:
        fitted = f", layers_={self.layers_}" if hasattr(self, "layers_") else ""
        return f"LIDDetector(k={self.k}, batch_size={self.batch_size}{fitted})"


__all__ = ["DEFAULT_K", "DEFAULT_BATCH_SIZE", "lid_mle", "minibatch_lids", "fit_logistic", "logistic_logit",
           "LIDDetector", "indexed_layer_tensors", "layers_from_tensors"]
