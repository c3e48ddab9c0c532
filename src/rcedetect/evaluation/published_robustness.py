"""Tramèr's claim check: a robust detector implies a robust classifier at half the radius.

Tramèr 2022 ("Detecting adversarial examples is (nearly) as hard as classifying them", ICML): from a
detector with robust accuracy-with-rejection R against perturbations of size eps one can build an
(inefficient) classifier with the same robust accuracy R at eps / 2. A detection result therefore
implies a classification result, and one that would beat the best published robust classifier at
eps / 2 is implausible -- more likely an attack too weak than a breakthrough.

`PUBLISHED` is the reference: robust accuracies (%) of published classifiers, each with the source it
was read from. The best classifier at a radius r <= eps / 2 bounds what any classifier reaches at
eps / 2 (a smaller ball is easier), so `tramer_check` compares R with the entry of the same dataset
and norm at the largest r <= eps / 2; without one there is nothing to compare (None). Only numbers
read in their sources are listed: MNIST L2 is missing for want of a verified figure, and the MNIST /
CIFAR-10 L-inf entries sit at the usual benchmark radii (0.3, 8/255), so they bound detector results
at eps >= 0.6 / 16/255 only.
"""

from typing import NamedTuple

from ..names import Dataset, Norm


class Published(NamedTuple):
    dataset: str
    norm: str
    eps: float
    robust_accuracy: float  # percent
    model: str
    source: str


PUBLISHED = (
    Published(Dataset.MNIST.value, Norm.LINF.value, 0.3, 96.34,
              "Gowal et al. 2020, 'Uncovering the limits of adversarial training' (arXiv 2010.03593)",
              "AutoAttack leaderboard, README of github.com/fra31/auto-attack, table 'MNIST - Linf' "
              "(eps = 0.3, AA column)"),
    Published(Dataset.CIFAR10.value, Norm.LINF.value, 8 / 255, 75.28,
              "Amini et al. 2024, MeanSparse WideResNet-94-16 (arXiv 2406.05927)",
              "RobustBench model_info/cifar10/Linf/Amini2024MeanSparse_S-WRN-94-16.json (autoattack_acc)"),
    Published(Dataset.CIFAR10.value, Norm.L2.value, 0.5, 87.28,
              "Amini et al. 2024, MeanSparse WideResNet-70-16 (arXiv 2406.05927)",
              "RobustBench model_info/cifar10/L2/Amini2024MeanSparse_S-WRN-70-16.json (autoattack_acc)"),
)


def published_at(dataset, norm, eps: float):
    """The `PUBLISHED` entry of `dataset` and `norm` at the largest radius <= eps, or None."""
    dataset, norm = Dataset.coerce(dataset).value, Norm.coerce(norm).value
    rows = [p for p in PUBLISHED if p.dataset == dataset and p.norm == norm and p.eps <= eps + 1e-9]
    return max(rows, key=lambda p: p.eps) if rows else None


def tramer_check(dataset, norm, eps: float, robust_accuracy) -> dict:
    """The classification result implied by a detector's robust accuracy with rejection (a fraction in
    [0, 1]) at `eps`, beside the published reference at eps / 2, and whether it would beat it.

    Returns {"implied_eps", "implied_robust_accuracy", "published": {eps, robust_accuracy (fraction),
    model, source} or None, "implausible": True / False, or None without a reference}."""
    half = float(eps) / 2
    ref = published_at(dataset, norm, half)
    out = {"implied_eps": half, "implied_robust_accuracy": robust_accuracy, "published": None, "implausible": None}
    if ref is not None and robust_accuracy is not None:
        out["published"] = {"eps": ref.eps, "robust_accuracy": ref.robust_accuracy / 100, "model": ref.model,
                            "source": ref.source}
        out["implausible"] = bool(robust_accuracy > ref.robust_accuracy / 100)
    return out
