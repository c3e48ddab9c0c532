"""The attacks of Pang et al. 2018 (section 2.3, appendix B.2-B.3), batched, on images in [0, 1].

Each attack is a plain function over a batch returning `AttackResult(x_adv, success)`:

    fgsm(model, x, y, *, eps)                                   L-inf, one step
    bim(model, x, y, *, eps, steps=10, step_size=None)          L-inf, iterative
    ilcm(model, x, *, eps, steps=10, step_size=None)            L-inf, towards the least-likely class
    jsma(model, x, target, *, theta=1.0, gamma=0.1, max_iters=100)          L0, pairwise saliency map
    cw_l2(model, x, y=None, *, target=None, kappa=0.0, binary_search_steps=9, max_iters=10000,
          lr=1e-2, initial_const=1e-3, abort_early=True)        L2; C&W-hc is kappa=10
    random_noise(x, *, eps, seed)                               the RAND noisy examples

`ATTACKS` maps the CLI names to `AttackSpec`s with one calling convention for all of them:

    spec = ATTACKS["cw"]
    targets = spec.targets(model, x, y, seed=0)           # what the attack aims at (-1: untargeted)
    result = spec(model, x, y, eps=None, target=targets, seed=0, max_iters=1000)

Settings not given keep the attack's (the paper's) defaults; `spec.defaults` holds the ones the spec
itself changes (kappa=10 for "cw-hc").
"""

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

import torch

from ..errors import InputError
from .adaptive_pgd import DetectorAwareResult, detector_aware_pgd
from .bim import bim
from .cw import CWOutput, cw_l2, cw_l2_search
from .cw_wb import CWWBResult, cw_wb
from .fgsm import fgsm
from .ilcm import ilcm, least_likely_class
from .jsma import jsma
from .noise import random_noise
from .result import AttackResult, eval_mode, load_adversarial, num_classes_of, random_targets, save_adversarial

__all__ = [
    "ATTACKS", "AttackResult", "AttackSpec", "CWOutput", "CWWBResult", "DetectorAwareResult", "bim", "cw_l2",
    "cw_l2_search", "cw_wb", "detector_aware_pgd", "fgsm", "ilcm",
    "jsma", "least_likely_class", "load_adversarial", "random_noise", "random_targets", "save_adversarial",
]


def _run_fgsm(model, x, y, *, eps, target, seed, **settings):
    return fgsm(model, x, y, eps=eps, **settings)


def _run_bim(model, x, y, *, eps, target, seed, **settings):
    return bim(model, x, y, eps=eps, **settings)


def _run_ilcm(model, x, y, *, eps, target, seed, **settings):
    return ilcm(model, x, eps=eps, **settings)


def _run_jsma(model, x, y, *, eps, target, seed, **settings):
    return jsma(model, x, target, **settings)


def _run_cw(model, x, y, *, eps, target, seed, **settings):
    return cw_l2(model, x, y, target=target, **settings)


def _run_rand(model, x, y, *, eps, target, seed, **settings):
    return random_noise(x, eps=eps, seed=seed, model=model, y=y, **settings)


def _random_class_targets(model, x, y, seed):
    return random_targets(y, num_classes_of(model, x), seed)


def _least_likely_targets(model, x, y, seed):
    with eval_mode(model):
        return least_likely_class(model, x)


@dataclass(frozen=True)
class AttackSpec:
    """One attack behind the uniform calling convention `spec(model, x, y, *, eps, target, seed, **settings)`.

    distance: "linf", "l0" or "l2". uses_eps: needs `eps` (L-inf radius / noise amplitude).
    target_rule: how `targets()` picks the goal classes (None: untargeted, returns -1s).
    """

    name: str
    run: Callable
    distance: str
    uses_eps: bool
    target_rule: Callable = None
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    @property
    def targeted(self) -> bool:
        return self.target_rule is not None

    def targets(self, model, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """The classes the attack aims at (N,): random != y (JSMA, C&W, seeded), least likely (ILCM), or -1."""
        if self.target_rule is None:
            return torch.full_like(y, -1)
        return self.target_rule(model, x, y, seed)

    def __call__(self, model, x, y, *, eps=None, target=None, seed: int = 0, **settings) -> AttackResult:
        if self.uses_eps and eps is None:
            raise InputError(f"attack {self.name} needs eps (the L-inf budget in [0, 1] pixel units): e.g. --eps 0.1")
        if self.target_rule is _random_class_targets and target is None:
            target = self.targets(model, x, y, seed=seed)
        return self.run(model, x, y, eps=eps, target=target, seed=seed, **{**self.defaults, **settings})


ATTACKS = {
    "fgsm": AttackSpec("fgsm", _run_fgsm, "linf", True, description="FGSM, Goodfellow et al. 2015"),
    "bim": AttackSpec("bim", _run_bim, "linf", True, description="BIM, Kurakin et al. 2017a"),
    "ilcm": AttackSpec("ilcm", _run_ilcm, "linf", True, _least_likely_targets,
                       description="iterative least-likely class, Kurakin et al. 2017a"),
    "jsma": AttackSpec("jsma", _run_jsma, "l0", False, _random_class_targets,
                       description="pairwise JSMA, Papernot et al. 2016b; random target != y"),
    "cw": AttackSpec("cw", _run_cw, "l2", False, _random_class_targets,
                     description="C&W-L2, Carlini & Wagner 2017a; random target != y"),
    "cw-hc": AttackSpec("cw-hc", _run_cw, "l2", False, _random_class_targets, MappingProxyType({"kappa": 10.0}),
                        description="high-confidence C&W-L2 (kappa=10); random target != y"),
    "rand": AttackSpec("rand", _run_rand, "linf", True, description="uniform noise U(-eps, eps), appendix B.3"),
}
