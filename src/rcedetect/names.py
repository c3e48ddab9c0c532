"""The project's one vocabulary: every name a user can type, as str-valued enums.

Each enum member *is* its string (`Objective.RCE == "rce"`), so JSON cells, argparse choices and
dictionary keys written before the enums existed keep working. Strings are coerced once, at the API
edge, with `Enum.coerce(value)`, which raises one clear `InputError` naming the valid choices;
everything inside the package then passes enum members around. Registries (attacks, metrics,
presets) are keyed by these members, and argparse takes `choices=Enum.choices()`.

    Dataset        mnist, cifar10
    Objective      ce, rce                      (training loss; K-density's bandwidth depends on it)
    Metric         confidence, non-me, kd       (the thresholding tests of section 3.4 = PAPER_METRICS)
                   lid, mahalanobis-lr          (supervised baselines: fitted on adversarial examples)
                   mahalanobis                  (unsupervised baseline: clean training data only)
    Attack         fgsm, bim, ilcm, jsma, cw, cw-hc, rand, cw-wb, cw-wb-hc, adaptive-pgd
    PGDMethod      logit, selective, orthogonal, sum (update rules of the detector-aware PGD)
    Formulation    logit, selective, orthogonal, sum, cw-l2 (attacks of the worst-case evaluation)
    Norm           linf, l2, l0                 (attack distances)
    Preset         quick, paper, toy            (reproduction / training budgets)
    LRSchedule     piecewise, warmup-linear     (training learning-rate schedules)
    TargetRule     least-likely, random         (the class a targeted attack aims at)
"""

from enum import Enum

from .errors import InputError


class Name(str, Enum):
    """A str enum whose members compare, hash and JSON-serialise as their values."""

    def __str__(self) -> str:  # f-strings and argparse print the value, not "Class.MEMBER"
        return self.value

    @classmethod
    def choices(cls) -> tuple:
        """The values in definition order (argparse `choices`, help texts)."""
        return tuple(m.value for m in cls)

    @classmethod
    def coerce(cls, value, what: str = None):
        """`value` (a member or its string) as a member; one-line `InputError` otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            label = what or cls.__name__.lower()
            raise InputError(f"unknown {label} {value!r}: choose one of {', '.join(cls.choices())}") from None

    @property
    def display(self) -> str:
        """The name as the paper's tables print it."""
        return _DISPLAY.get(self, self.value)


class Dataset(Name):
    MNIST = "mnist"
    CIFAR10 = "cifar10"


class Objective(Name):
    CE = "ce"
    RCE = "rce"


class Metric(Name):
    CONFIDENCE = "confidence"
    NON_ME = "non-me"
    KD = "kd"
    LID = "lid"                    # baseline: Ma et al. 2018 (supervised, needs adversarial examples to fit)
    MAHALANOBIS = "mahalanobis"    # baseline: Lee et al. 2018, unsupervised penultimate-layer form
    MAHALANOBIS_LR = "mahalanobis-lr"  # baseline: Lee et al. 2018, several layers + logistic regression (supervised)


# The thresholding metrics of the paper (section 3.4): what its tables and the detect CLI compare.
PAPER_METRICS = (Metric.CONFIDENCE, Metric.NON_ME, Metric.KD)
# The baseline detectors (beyond the paper), in the order the report's Baselines table prints them;
# the supervised ones are fitted on adversarial + noisy examples (detectors/supervised.py).
BASELINE_METRICS = (Metric.LID, Metric.MAHALANOBIS_LR, Metric.MAHALANOBIS)
SUPERVISED_METRICS = (Metric.LID, Metric.MAHALANOBIS_LR)


class Attack(Name):
    FGSM = "fgsm"
    BIM = "bim"
    ILCM = "ilcm"
    JSMA = "jsma"
    CW = "cw"
    CW_HC = "cw-hc"
    RAND = "rand"
    CW_WB = "cw-wb"
    CW_WB_HC = "cw-wb-hc"
    ADAPTIVE_PGD = "adaptive-pgd"


class PGDMethod(Name):
    LOGIT = "logit"
    SELECTIVE = "selective"
    ORTHOGONAL = "orthogonal"
    SUM = "sum"                    # f + lambda * g, Carlini & Wagner 2017b's sum form (needs its lambda)


# The three update rules with no hyperparameter: the defaults of `adaptive_curve` and `threat-models`.
PGD_RULES = (PGDMethod.LOGIT, PGDMethod.SELECTIVE, PGDMethod.ORTHOGONAL)


class Formulation(Name):
    """The attacks of the worst-case evaluation (`evaluation.worst_case`): the PGD update rules, and
    C&W-L2 with the detector's hinge inside its c-weighted term (C&W-wb generalised to any score)."""

    LOGIT = "logit"
    SELECTIVE = "selective"
    ORTHOGONAL = "orthogonal"
    SUM = "sum"
    CW_L2 = "cw-l2"


class Norm(Name):
    LINF = "linf"
    L2 = "l2"
    L0 = "l0"


class Preset(Name):
    QUICK = "quick"
    PAPER = "paper"
    TOY = "toy"


class Precision(Name):
    """Arithmetic of the training step's forward and backward (weights, optimiser and every
    evaluation stay float32)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"  # torch.autocast mixed precision: convolutions in bfloat16, loss in float32


class LRSchedule(Name):
    """Learning-rate schedule of a training run (`TrainConfig.learning_rate`)."""

    PIECEWISE = "piecewise"  # the paper's: lr_values[k] between lr_boundaries[k-1] and lr_boundaries[k]
    WARMUP_LINEAR = "warmup-linear"  # linear warm-up to lr_values[0] over warmup_steps, then linear decay to 0


class AbortRule(Name):
    """When a C&W binary-search step ends early (Carlini's check, every max_iters // 10 iterations)."""

    NONE = "none"        # never: every step runs max_iters iterations
    EXAMPLE = "example"  # per example, on the loss at the check: no progress of 0.01 % since the last check
    WINDOW = "window"    # per example, on the best loss of the window: no iterate since the last check beat the best by 0.01 %;
    #                      checks at least 50 iterations apart (cw.WINDOW_MIN_CHECK)


class TargetRule(Name):
    LEAST_LIKELY = "least-likely"  # argmin F(x): ILCM, and JSMA in the authors' test_adv.py
    RANDOM = "random"              # uniform over the classes != y: C&W, and JSMA in the paper's text


_DISPLAY = {
    Dataset.MNIST: "MNIST", Dataset.CIFAR10: "CIFAR-10",
    Objective.CE: "CE", Objective.RCE: "RCE",
    Metric.CONFIDENCE: "Confidence", Metric.NON_ME: "non-ME", Metric.KD: "K-density",
    Metric.LID: "LID", Metric.MAHALANOBIS: "Mahalanobis (unsup.)", Metric.MAHALANOBIS_LR: "Mahalanobis (LR)",
    Attack.FGSM: "FGSM", Attack.BIM: "BIM", Attack.ILCM: "ILCM", Attack.JSMA: "JSMA", Attack.CW: "C&W",
    Attack.CW_HC: "C&W-hc", Attack.RAND: "RAND", Attack.CW_WB: "C&W-wb", Attack.CW_WB_HC: "C&W-wb-hc",
    Attack.ADAPTIVE_PGD: "detector-aware PGD",
    Formulation.LOGIT: "PGD logit", Formulation.SELECTIVE: "PGD selective", Formulation.ORTHOGONAL: "PGD orthogonal",
    Formulation.SUM: "PGD f + λg", Formulation.CW_L2: "C&W-L2 + detector",
    Norm.LINF: "L∞", Norm.L2: "L2", Norm.L0: "L0",
}

__all__ = ["Name", "Dataset", "Objective", "Metric", "Attack", "PGDMethod", "PGD_RULES", "Formulation", "Norm", "Preset", "TargetRule", "AbortRule", "PAPER_METRICS",
           "BASELINE_METRICS", "SUPERVISED_METRICS"]
