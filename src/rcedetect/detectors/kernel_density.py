"""Kernel density (K-density) in the final-layer feature space, section 3.4 of Pang et al. 2018
(after Feinman et al. 2017).

    KD(z) = 1/|X_ŷ| Σ_{z_i ∈ X_ŷ} exp(-||z - z_i||² / σ²)

X_ŷ is a bank of training features whose *true* label is the *predicted* class ŷ of z. We return
log KD(z) (natural log, the mean inside the log) computed with logsumexp, so points far from every
bank point get a large negative but finite value instead of KD = 0.

Relation to a normalised Gaussian KDE (e.g. scikit-learn's `KernelDensity(bandwidth=h)`): with
h² = σ²/2 the kernels agree up to the constant (2π h²)^{d/2} = (π σ²)^{d/2}, i.e.
    log KD(z) = log p_sklearn(z) + (d/2) log(π σ²).

Defaults σ² = 1/0.26 (CE) and 0.1/0.26 (RCE) are the values of the authors' code (Table 2).

Speed: squared distances as ||q||² + ||z_i||² - 2 q·z_i with one matmul per (query chunk, class
bank), only against the bank of each query's class (||q||² leaves the logsumexp as a constant).
float32 cancellation in that expansion is kept small by centring queries and bank on the bank's
mean first (distances are translation invariant).
"""

import math

import numpy as np
import torch

from ..errors import InputError, check_keywords
from ..models import ModelOutput
from ..names import Metric, Objective

DEFAULT_CHUNK_SIZE = 1 << 17  # elements of one (queries x bank) distance block
STACKED_ELEMENTS = 1 << 22  # at most this many gathered bank elements (n x K x d) for the stacked path
DEFAULT_BANDWIDTH_SQ = {Objective.CE: 1.0 / 0.26, Objective.RCE: 0.1 / 0.26}


def default_bandwidth_sq(objective) -> float:
    """σ² of the authors' code: 1/0.26 for CE models, 0.1/0.26 for RCE models."""
    try:
        return DEFAULT_BANDWIDTH_SQ[Objective(objective)]
    except ValueError:
        raise InputError(f"no default K-density bandwidth for objective {objective!r}: "
                         f"choose one of {', '.join(Objective.choices())} or pass bandwidth_sq") from None


def _features(model_output) -> torch.Tensor:
    features = model_output.features if isinstance(model_output, ModelOutput) else model_output
    if not torch.is_tensor(features) or features.dim() != 2:
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise InputError(f"expected features of shape (N, d), got {shape}")
    return features


def per_class_subset(y, n_per_class, seed: int, num_classes=None, why: str = "every class is needed") -> torch.Tensor:
    """Indices into labels `y`: per class, a seeded random subset of `n_per_class` (None: all), sorted
    within the class, classes in order. The K-density bank's rule, shared by the Mahalanobis metric."""
    y = torch.as_tensor(y).long().cpu()
    if y.dim() != 1 or y.numel() == 0:
        raise InputError(f"expected non-empty labels of shape (N,), got {tuple(y.shape)}")
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        idx = (y == c).nonzero().squeeze(1)
        if idx.numel() == 0:
            raise InputError(f"class {c} has no training examples: {why}")
        perm = torch.randperm(idx.numel(), generator=generator)
        if n_per_class is not None:
            perm = perm[:n_per_class]
        chosen.append(idx[perm.sort().values])
    return torch.cat(chosen)


class KernelDensity:
    """Per-class Gaussian kernel density on penultimate features (Pang et al. 2018, section 3.4).

    Args:
        bandwidth_sq: σ² of the kernel exp(-||z - z_i||² / σ²); see `default_bandwidth_sq`.
        n_per_class: bank size per class, a seeded random subset of the training features of each
            true class (None: all of them). Default 1000.
        seed: seed of that subset.
        chunk_size: max elements of one (queries × bank) distance block: bounds memory, and blocks
            that stay in cache are faster (default 2**17).

    Fitted state: `bank_` (M, d) features sorted by class, `bank_counts_` (C,) points per class.
    Scoring (`log_density`, `score_samples`) is differentiable w.r.t. the query features and runs on
    the device/dtype of the queries. Scoring a training point that is itself in the bank counts
    its own kernel exp(0) = 1, so use held-out data for thresholds.
    """

    name = Metric.KD
    requires_fit = True

    def __init__(self, bandwidth_sq: float, *, n_per_class=1000, seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE):
        if not bandwidth_sq > 0:
            raise InputError(f"bandwidth_sq must be positive, got {bandwidth_sq}")
        if n_per_class is not None and n_per_class < 1:
            raise InputError(f"n_per_class must be positive or None, got {n_per_class}")
        self.bandwidth_sq = float(bandwidth_sq)
        self.n_per_class = n_per_class
        self.seed = seed
        self.chunk_size = chunk_size
        self._cache = {}

    @classmethod
    def for_objective(cls, objective, *, bandwidth_sq=None, **kwargs) -> "KernelDensity":
        """A K-density for a model trained with `objective` ('ce' / 'rce'): the paper's bandwidth unless
        `bandwidth_sq` is given; other keyword arguments are `KernelDensity`'s (unknown ones refused)."""
        check_keywords(cls.__init__, kwargs, "KernelDensity", also=("bandwidth_sq",))
        return cls(default_bandwidth_sq(objective) if bandwidth_sq is None else bandwidth_sq, **kwargs)

    # ----------------------------------------------------------------------------------- fitting
    def subset_indices(self, y, num_classes=None) -> torch.Tensor:
        """Indices into `y` of the bank: per true class, a seeded random `n_per_class` subset (sorted).

        Lets callers compute features for only these training examples before `fit`.
        """
        return per_class_subset(y, self.n_per_class, self.seed, num_classes, "K-density needs a bank for every class")

    def fit(self, model_output, y, *, num_classes=None) -> "KernelDensity":
        """Build the banks from training `model_output` (or features (N, d)) grouped by true label `y`."""
        features = _features(model_output)
        if isinstance(model_output, ModelOutput) and num_classes is None:
            num_classes = model_output.logits.shape[1]
        y = torch.as_tensor(y, device=features.device).long()
        if y.shape != (features.shape[0],):
            raise InputError(f"labels of shape {tuple(y.shape)} do not match {features.shape[0]} feature rows")
        if num_classes is not None and int(y.max()) >= num_classes:
            raise InputError(f"label {int(y.max())} out of range for {num_classes} classes")
        index = self.subset_indices(y, num_classes).to(features.device)
        labels = y[index]
        # The bank is data, not a function of the model being attacked: no gradient into it.
        self.bank_ = features.detach()[index].clone()
        self.bank_counts_ = torch.bincount(labels, minlength=num_classes or 0).cpu()
        self._cache = {}
        return self

    def _check_fitted(self):
        if not hasattr(self, "bank_"):
            raise InputError("this KernelDensity is not fitted: call fit(train_output, train_labels) first")

    @property
    def num_classes(self) -> int:
        self._check_fitted()
        return int(self.bank_counts_.numel())

    def class_slices(self) -> list:
        """The rows of each class in `bank_` (which is sorted by class), as one slice per class."""
        self._check_fitted()
        stops = torch.cumsum(self.bank_counts_, 0).tolist()
        return [slice(a, b) for a, b in zip([0] + stops[:-1], stops)]

    def subset(self, rows, **params) -> "KernelDensity":
        """A fitted K-density over the bank rows `rows` (sorted indices into `bank_`, so classes stay
        grouped), with this one's σ²; `params` override `n_per_class`, `seed`, `chunk_size`."""
        self._check_fitted()
        check_keywords(KernelDensity.__init__, params, "KernelDensity.subset")
        rows = torch.as_tensor(rows).long().cpu()
        labels = torch.repeat_interleave(torch.arange(self.num_classes), self.bank_counts_)[rows]
        if rows.dim() != 1 or (rows.numel() > 1 and bool((labels[1:] < labels[:-1]).any())):
            raise InputError("subset rows must be a 1-D tensor of bank indices sorted by class")
        settings = {"n_per_class": self.n_per_class, "seed": self.seed, "chunk_size": self.chunk_size, **params}
        sub = KernelDensity(self.bandwidth_sq, **settings)
        sub.bank_ = self.bank_.detach()[rows.to(self.bank_.device)].clone()
        sub.bank_counts_ = torch.bincount(labels, minlength=self.num_classes)
        return sub

    def to(self, device) -> "KernelDensity":
        """Move the bank to `device` (scoring also moves it on the fly, this avoids repeating it)."""
        self._check_fitted()
        self.bank_ = self.bank_.to(device)
        self._cache = {}
        return self

    def _banks(self, device, dtype):
        """Per-class (centred bank transposed (d, K), -||z_i||²/σ² (K,), centre (d,)), cached per device/dtype."""
        key = (str(device), dtype, self.bandwidth_sq)
        if key not in self._cache:
            bank = self.bank_.to(device=device, dtype=dtype)
            banks = []
            for part in torch.split(bank, self.bank_counts_.tolist()):
                center = part.mean(dim=0)
                centred = part - center
                z_term = (centred * centred).sum(dim=1) * (-1.0 / self.bandwidth_sq)
                banks.append((centred.T.contiguous(), z_term, center))
            self._cache = {key: banks}  # keep one entry (and its stacked form): the bank may be large
        return self._cache[key]

    # ----------------------------------------------------------------------------------- scoring
    def _class_log_density(self, queries: torch.Tensor, bank) -> torch.Tensor:
        """log KD of `queries` (n, d) against one class bank: for each row,

            log mean_i exp(-||q - z_i||²/σ²) = logsumexp_i((2 q·z_i - ||z_i||²)/σ²) - ||q||²/σ² - log K

        with q and z_i centred on the bank mean; one addmm per block of rows. The result is clamped at 0
        (a mean of kernels is at most 1; float rounding can overshoot by ~1e-7 at duplicates).
        """
        centred_t, z_term, center = bank
        k = centred_t.shape[1]
        rows = max(1, self.chunk_size // max(k, 1))
        inv = 1.0 / self.bandwidth_sq
        if torch.is_grad_enabled() and queries.requires_grad:
            out = []
            for start in range(0, queries.shape[0], rows):
                q = queries[start:start + rows] - center
                s = torch.addmm(z_term, q, centred_t, alpha=2.0 * inv)
                out.append(torch.logsumexp(s, dim=1) - (q * q).sum(dim=1) * inv)
            return (torch.cat(out) - math.log(k)).clamp_max(0.0)
        # Without autograd: the same arithmetic in one reused (rows, K) buffer. Fresh large temporaries
        # (page faults) and extra passes over the block cost more than the matmul itself here.
        with torch.no_grad():
            buffer = queries.new_empty(min(rows, queries.shape[0]), k)
            out = queries.new_empty(queries.shape[0])
            for start in range(0, queries.shape[0], rows):
                q = queries[start:start + rows] - center
                s = buffer[:q.shape[0]]
                torch.addmm(z_term, q, centred_t, alpha=2.0 * inv, out=s)
                shift = s.amax(dim=1)  # logsumexp by hand, in place
                o = out[start:start + rows]
                torch.sum(s.sub_(shift.unsqueeze(1)).exp_(), dim=1, out=o)
                o.log_().add_(shift).sub_((q * q).sum(dim=1).mul_(inv))
            return out.sub_(math.log(k)).clamp_max_(0.0)

    def _stacked_log_density(self, queries: torch.Tensor, classes: torch.Tensor, banks) -> torch.Tensor:
        """`_class_log_density` for rows of mixed classes at once, when every class bank has K points:
        each row is gathered its own class's bank (n, d, K) and one batched product replaces the loop
        over classes (its unique / nonzero / index_copy calls cost more than the arithmetic at the
        attacks' batch sizes: C&W-wb calls this every iteration with a 100-point attack bank)."""
        key = ("stacked", str(queries.device), queries.dtype, self.bandwidth_sq)
        if key not in self._cache:
            self._cache[key] = tuple(torch.stack(parts) for parts in zip(*banks))
        centred_t, z_term, center = self._cache[key]
        k = centred_t.shape[2]
        inv = 1.0 / self.bandwidth_sq
        q = queries - center[classes]
        s = z_term[classes] + torch.bmm(q.unsqueeze(1), centred_t[classes]).squeeze(1) * (2.0 * inv)
        return (torch.logsumexp(s, dim=1) - (q * q).sum(dim=1) * inv - math.log(k)).clamp_max(0.0)

    def log_density_for_class(self, features, classes) -> torch.Tensor:
        """log KD of each row of `features` (N, d) against the bank of `classes` (N,) or an int, (N,)."""
        self._check_fitted()
        features = _features(features)
        if features.shape[1] != self.bank_.shape[1]:
            raise InputError(f"features have dimension {features.shape[1]}, the bank {self.bank_.shape[1]}")
        n = features.shape[0]
        if isinstance(classes, int):
            classes = torch.full((n,), classes, dtype=torch.long, device=features.device)
        classes = torch.as_tensor(classes, device=features.device).long()
        if classes.shape != (n,):
            raise InputError(f"classes of shape {tuple(classes.shape)} do not match {n} feature rows")
        if n == 0:
            return features.new_zeros(0)
        if int(classes.min()) < 0 or int(classes.max()) >= self.num_classes:
            raise InputError(f"classes must lie in [0, {self.num_classes}), "
                             f"got {int(classes.min())}..{int(classes.max())}")
        banks = self._banks(features.device, features.dtype)
        counts = self.bank_counts_
        # Gradients (the attacks' per-iteration calls) take the stacked path; scoring without autograd
        # keeps the per-class blocks (fast for large batches, and its numbers bit-identical to before).
        if (torch.is_grad_enabled() and features.requires_grad and bool((counts == counts[0]).all())
                and n * int(counts[0]) * features.shape[1] <= STACKED_ELEMENTS):
            return self._stacked_log_density(features, classes, banks)
        present = classes.unique()
        if present.numel() == 1:
            return self._class_log_density(features, banks[int(present)])
        indices, values = [], []
        for c in present.tolist():
            idx = (classes == c).nonzero().squeeze(1)
            indices.append(idx)
            values.append(self._class_log_density(features[idx], banks[c]))
        # Out-of-place index_copy keeps the graph to every group's values.
        return features.new_zeros(n).index_copy(0, torch.cat(indices), torch.cat(values))

    def log_density_all(self, features) -> torch.Tensor:
        """log KD of every row of `features` (N, d) against every class bank, shape (N, C)."""
        self._check_fitted()
        features = _features(features)
        banks = self._banks(features.device, features.dtype)
        return torch.stack([self._class_log_density(features, bank) for bank in banks], dim=1)

    def log_density(self, model_output: ModelOutput) -> torch.Tensor:
        """log KD(z) with the bank of the predicted class argmax(logits), shape (N,)."""
        return self.log_density_for_class(model_output.features, model_output.logits.argmax(dim=1))

    def score(self, model_output: ModelOutput) -> torch.Tensor:
        """Detector score (higher = more normal): `log_density`."""
        return self.log_density(model_output)

    score_samples = score

    def log_normalizer(self, dim: int) -> float:
        """(d/2) log(π σ²): subtract from `log_density` to get a normalised Gaussian-KDE log-likelihood."""
        return 0.5 * dim * math.log(math.pi * self.bandwidth_sq)

    # ------------------------------------------------------------------------------- persistence
    def params(self) -> dict:
        return {"bandwidth_sq": self.bandwidth_sq, "n_per_class": self.n_per_class, "seed": self.seed}

    def state_tensors(self) -> dict:
        self._check_fitted()
        return {"bank": self.bank_, "bank_counts": self.bank_counts_}

    @classmethod
    def from_state(cls, params: dict, tensors: dict) -> "KernelDensity":
        kd = cls(params["bandwidth_sq"], n_per_class=params.get("n_per_class"), seed=params.get("seed", 0))
        kd.bank_ = tensors["bank"]
        kd.bank_counts_ = tensors["bank_counts"].long()
        if int(kd.bank_counts_.sum()) != kd.bank_.shape[0]:
            raise InputError("stored K-density bank and its class counts disagree: refit the detector")
        return kd

    def __repr__(self) -> str:
        return (f"KernelDensity(bandwidth_sq={self.bandwidth_sq:.6g}, n_per_class={self.n_per_class}, "
                f"seed={self.seed})")


def select_bandwidth(train_output, train_labels, validation_output, validation_labels=None, *,
                     candidates=None, adversarial_output=None, n_per_class=1000, seed: int = 0):
    """Pick σ² for `KernelDensity` from `candidates` (default: 9 values from 0.01/0.26 to 100/0.26,
    a log grid that contains both paper defaults).

    Two criteria:
      * `adversarial_output is None`: held-out likelihood. Mean over the clean validation set of the
        *normalised* log-likelihood log KD(z) - (d/2) log(π σ²) (without the constant, larger σ²
        always wins), each point scored with the bank of its true label (`validation_labels`) or,
        when labels are not given, its predicted class.
      * `adversarial_output` given (a validation attack's outputs): the ROC AUC of separating
        clean (positive, higher = normal) from adversarial by log KD with predicted classes.

    Returns `(best_bandwidth_sq, {bandwidth_sq: criterion})`, larger criterion = better.
    """
    from sklearn.metrics import roc_auc_score

    if candidates is None:
        candidates = tuple(float(v) / 0.26 for v in np.logspace(-2, 2, 9))
    if not candidates:
        raise InputError("select_bandwidth needs at least one candidate bandwidth")
    features = _features(train_output)
    num_classes = train_output.logits.shape[1] if isinstance(train_output, ModelOutput) else None
    table = {}
    for bw in candidates:
        kd = KernelDensity(bw, n_per_class=n_per_class, seed=seed).fit(features, train_labels, num_classes=num_classes)
        with torch.no_grad():
            if adversarial_output is None:
                classes = (validation_output.logits.argmax(1) if validation_labels is None
                           else torch.as_tensor(validation_labels))
                ll = (kd.log_density_for_class(validation_output.features, classes)
                      - kd.log_normalizer(features.shape[1]))
                table[float(bw)] = float(ll.double().mean())
            else:
                clean = kd.log_density(validation_output).double().cpu().numpy()
                adv = kd.log_density(adversarial_output).double().cpu().numpy()
                y_true = np.r_[np.ones(clean.size), np.zeros(adv.size)]
                table[float(bw)] = float(roc_auc_score(y_true, np.r_[clean, adv]))
    best = max(table, key=table.get)
    return best, table
