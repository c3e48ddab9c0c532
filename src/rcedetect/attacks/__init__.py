"""The attacks of Pang et al. 2018 (section 2.3, appendix B.2-B.3), batched, on images in [0, 1].

Each attack is a plain function over a batch returning `AttackResult(x_adv, success)`:

    fgsm(model, x, y, *, eps)                                   L-inf, one step
    bim(model, x, y, *, eps, steps=10, step_size=None)          L-inf, iterative
    ilcm(model, x, *, eps, steps=10, step_size=None)            L-inf, towards the least-likely class
    jsma(model, x, target, *, theta=1.0, gamma=None, max_iters=100, mode="single")   L0, saliency map
    cw_l2(model, x, y=None, *, target=None, kappa=0.0, binary_search_steps=9, max_iters=10000,
          lr=1e-2, initial_const=1e-3, abort_early=True, abort_rule="window")    L2; C&W-hc is kappa=10
    random_noise(x, *, eps, seed)                               the RAND noisy examples

`ATTACKS` maps each `Attack` (string lookups work: members are their strings) to an `AttackSpec`
with one calling convention for all of them:

    spec = ATTACKS[Attack.CW]
    result = spec(model, x, y, eps=None, target=None, seed=0, start=0, max_iters=1000)
    spec.targets(model, x, y, seed=0, start=0)     # what it aims at; None for untargeted attacks

The spec owns the attack's rules, so no caller needs to know attack names:
  * `eps` is the L-inf radius / noise amplitude, and JSMA's per-feature offset theta (section 2.3);
  * random-class targets (C&W, C&W-hc; the paper's "random class != y") are drawn by the spec when
    `target` is None, as a function of each row's global index `start + i`, so attacking a set in any
    chunking gives the same targets; JSMA aims at the least likely class as the authors' test_adv.py
    does (`targets="random"` selects the random rule); ILCM computes its least-likely target itself;
  * an argument the attack does not use (eps, target, seed) or an unknown setting is refused with an
    `InputError` listing what it accepts. Settings not given keep the attack's (the paper's)
    defaults; `spec.defaults` holds the ones the spec itself changes (kappa=10 for C&W-hc).
"""

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

import torch

from ..errors import InputError
from ..names import Attack, Norm, TargetRule
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


# Adapters to one signature run(model, x, y, *, target, seed, **settings); `eps` arrives in settings
# under the attack's own name for it (`AttackSpec.eps_setting`).
def _run_fgsm(model, x, y, *, target, seed, **settings):
    return fgsm(model, x, y, **settings)


def _run_bim(model, x, y, *, target, seed, **settings):
    return bim(model, x, y, **settings)


def _run_ilcm(model, x, y, *, target, seed, **settings):
    return ilcm(model, x, **settings)


def _run_jsma(model, x, y, *, target, seed, **settings):
    return jsma(model, x, target, **settings)


def _run_cw(model, x, y, *, target, seed, **settings):
    return cw_l2(model, x, y, target=target, **settings)


def _run_rand(model, x, y, *, target, seed, **settings):
    return random_noise(x, seed=seed, model=model, y=y, **settings)


def _random_class_targets(model, x, y, seed, start):
    return random_targets(y, num_classes_of(model, x), seed, start=start)


def _least_likely_targets(model, x, y, seed, start):
    with eval_mode(model):
        return least_likely_class(model, x)


TARGET_RULES = MappingProxyType({TargetRule.RANDOM: _random_class_targets,
                                 TargetRule.LEAST_LIKELY: _least_likely_targets})


# Arguments of the attack functions that the calling convention itself supplies (never settings).
_SUPPLIED = frozenset({"eps", "seed", "target", "model", "y"})


@dataclass(frozen=True)
class AttackSpec:
    """One attack behind `spec(model, x, y, *, eps=None, target=None, seed=None, start=0, **settings)`.

    name: the `Attack`. run: adapter `run(model, x, y, *, target, seed, **settings)`. function: the
    attack function, whose keyword-only parameters are the settings it accepts. distance: a `Norm`.
    eps_setting: the function's parameter that `eps` sets ("eps", JSMA's "theta"), None: no eps.
    eps_required: `eps` must be given. target_rule: `(model, x, y, seed, start) -> targets`, None for
    untargeted attacks. draws_targets: the spec draws the targets itself when none are given (the
    random-class attacks: `target` and `seed` apply); otherwise the attack takes no `target`.
    uses_seed: the result depends on `seed` (random targets, noise). target_choices: the `TargetRule`s
    the `targets=` setting may select instead of `target_rule` (JSMA: the authors' least-likely class
    or the paper text's random class).
    """

    name: Attack
    run: Callable
    function: Callable
    distance: Norm
    eps_setting: str = None
    eps_required: bool = False
    target_rule: Callable = None
    draws_targets: bool = False
    uses_seed: bool = False
    target_choices: tuple = ()
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    @property
    def targeted(self) -> bool:
        """The attack aims at a class (JSMA, C&W, C&W-hc: random != y; ILCM: the least likely)."""
        return self.target_rule is not None

    @property
    def takes_eps(self) -> bool:
        """The attack accepts `eps` (the L-inf attacks and RAND require it; for JSMA it is theta)."""
        return self.eps_setting is not None

    @property
    def uses_eps(self) -> bool:
        """The attack needs `eps` (the L-inf attacks and RAND)."""
        return self.eps_required

    @property
    def settings(self) -> tuple:
        """The keyword settings the attack accepts besides eps / target / seed."""
        own = tuple(s for s in _keyword_only(self.function) if s not in _SUPPLIED)
        return own + (("targets",) if self.target_choices else ())

    def rule(self, targets=None) -> Callable:
        """The target rule: `target_rule`, or the `TargetRule` named by the `targets=` setting."""
        if targets is None:
            return self.target_rule
        rule = TargetRule.coerce(targets, "target rule")
        if rule not in self.target_choices:
            raise InputError(f"attack {self.name} aims at {' or '.join(self.target_choices)} classes, "
                             f"not {rule}: drop targets= or choose one of those")
        return TARGET_RULES[rule]

    def targets(self, model, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, start: int = 0, rule=None):
        """The classes the attack aims at (N,), or None for untargeted attacks. Random-class targets
        depend only on `seed` and each row's global index `start + i`; `rule`: a `TargetRule`."""
        chosen = self.rule(rule)
        if chosen is None:
            return None
        return chosen(model, x, y, 0 if seed is None else seed, start)

    def check_eps(self, eps, flag: str = "eps") -> None:
        """Refuse a missing, superfluous or out-of-range `eps` (on [0, 1] images): the L-inf attacks take
        a budget in (0, 1], RAND a noise amplitude in [0, 1], JSMA a feature change theta in [-1, 1] \\ {0}."""
        from .. import validate

        if self.eps_setting is None and eps is not None:
            raise InputError(f"attack {self.name} takes no eps: drop {flag}")
        if self.eps_required and eps is None:
            raise InputError(f"attack {self.name} needs --eps / eps= (the L-inf budget in [0, 1] pixel units): "
                             f"e.g. --eps 0.1")
        if eps is None:
            return
        if self.eps_setting == "theta":
            validate.number(eps, flag, low=-1.0, high=1.0, meaning=f"{self.name}'s change of a [0, 1] feature")
            if eps == 0:
                raise InputError(f"{flag} 0 makes {self.name} change nothing: pass a feature change in [-1, 1], "
                                 f"e.g. {flag} 1")
        else:
            validate.budget(eps, self.distance, flag, allow_zero=self.name == Attack.RAND)

    def check_arguments(self, *, eps=None, target=None, seed=None, settings=None) -> None:
        """Refuse, with one `InputError`, what this attack does not take (see the module docstring)."""
        settings = dict(settings or {})
        self.check_eps(eps)
        if eps is not None and self.eps_setting in settings:
            raise InputError(f"attack {self.name}: eps is its {self.eps_setting}; pass eps or {self.eps_setting}, "
                             f"not both")
        if target is not None and not self.draws_targets:
            why = "it picks its own target class" if self.targeted else "it is untargeted"
            raise InputError(f"attack {self.name} takes no target ({why}): drop it")
        if seed is not None and not self.uses_seed:
            raise InputError(f"attack {self.name} is deterministic and takes no seed: drop it")
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            raise InputError(f"attack {self.name} does not take {', '.join(unknown)}: its settings are "
                             f"{', '.join(self.settings) or '(none)'}")

    def __call__(self, model, x, y, *, eps=None, target=None, seed=None, start: int = 0,
                 **settings) -> AttackResult:
        self.check_arguments(eps=eps, target=target, seed=seed, settings=settings)
        seed = 0 if seed is None else seed
        settings = {**self.defaults, **settings}
        rule = settings.pop("targets", None)
        if eps is not None:
            settings[self.eps_setting] = eps
        if self.draws_targets and target is None:
            target = self.targets(model, x, y, seed=seed, start=start, rule=rule)
        return self.run(model, x, y, target=target, seed=seed, **settings)


def _keyword_only(function) -> tuple:
    import inspect

    return tuple(n for n, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY)


def _linf(name, run, function, description, *, target_rule=None, uses_seed=False):
    return AttackSpec(name, run, function, Norm.LINF, "eps", True, target_rule, uses_seed=uses_seed,
                      description=description)


def _random_target(name, run, function, distance, description, *, eps_setting=None, defaults=None,
                   target_rule=_random_class_targets, target_choices=()):
    return AttackSpec(name, run, function, distance, eps_setting, False, target_rule, draws_targets=True,
                      uses_seed=True, target_choices=tuple(target_choices),
                      defaults=MappingProxyType(dict(defaults or {})), description=description)


ATTACKS = {
    Attack.FGSM: _linf(Attack.FGSM, _run_fgsm, fgsm, "FGSM, Goodfellow et al. 2015"),
    Attack.BIM: _linf(Attack.BIM, _run_bim, bim, "BIM, Kurakin et al. 2017a"),
    Attack.ILCM: _linf(Attack.ILCM, _run_ilcm, ilcm, "iterative least-likely class, Kurakin et al. 2017a",
                       target_rule=_least_likely_targets),
    Attack.JSMA: _random_target(Attack.JSMA, _run_jsma, jsma, Norm.L0,
                                "JSMA, Papernot et al. 2016b: the authors' single-feature map towards the least "
                                "likely class (targets=random: a random class != y); eps = theta",
                                eps_setting="theta", target_rule=_least_likely_targets,
                                target_choices=(TargetRule.LEAST_LIKELY, TargetRule.RANDOM)),
    Attack.CW: _random_target(Attack.CW, _run_cw, cw_l2, Norm.L2, "C&W-L2, Carlini & Wagner 2017a; random target != y"),
    Attack.CW_HC: _random_target(Attack.CW_HC, _run_cw, cw_l2, Norm.L2,
                                 "high-confidence C&W-L2 (kappa=10); random target != y", defaults={"kappa": 10.0}),
    Attack.RAND: _linf(Attack.RAND, _run_rand, random_noise, "uniform noise U(-eps, eps), appendix B.3", uses_seed=True),
}
