"""Estimated seconds of a reproduction's cells on a quiet 2-core CPU: the weights of the overall ETA.

`COSTS` holds the measured-order per-image costs of one ResNet-32 forward / forward+backward on a
quiet 2-core CPU (MNIST; training: ~0.30 s per batch-128 step, i.e. ~2.5 min for the quick 500
steps). Other depths scale with the number of residual blocks; CIFAR-10 with the input area
(32x32x3 stem vs 28x28x1: the body dominates, ~1.3x). Each cell prices itself (`Cell.cost`) in
these units; the ETA shown while running adapts to the machine's real speed.
"""

from dataclasses import dataclass, field
from types import MappingProxyType

from ..attacks.cw import DEFAULT_ABORT_RULE, abort_rule_of
from ..names import AbortRule, Attack, Dataset, PGDMethod, Precision


def _frozen(mapping) -> MappingProxyType:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class CostModel:
    """Seconds per image (`fwd`, `grad`) or per training step, per dataset, as a function of depth."""

    fwd: float = 0.6e-3
    grad: float = 1.6e-3
    train_step: float = 0.30
    dataset_factor: MappingProxyType = field(default_factory=lambda: _frozen({Dataset.MNIST: 1.0,
                                                                             Dataset.CIFAR10: 1.3}))
    # Training step in bfloat16 mixed precision vs float32 (config.QUICK_PRECISION's measurement).
    bf16_train_speedup: MappingProxyType = field(default_factory=lambda: _frozen({Dataset.MNIST: 1.44,
                                                                                 Dataset.CIFAR10: 1.79}))
    # C&W (benchmarks/cw_matrix.py, quick MNIST models, RESULTS.md "C&W engine"): the fraction of a
    # budget's iterations an example runs, per abort rule (`AbortRule`), the median over the matrix's
    # quick-budget runs (3 x 500, 2 x 800 at lr 0.1; cw_matrix_2026-12-03.jsonl): EXAMPLE 0.55-0.64,
    # WINDOW 0.84-0.89 (at the paper-like 9 x 1 000, lr 0.01 both ~0.76: benchmarks/paper_attack_cost.py
    # uses that one for the paper preset). One iteration costs the forward+backward floor / the engine's
    # efficiency (median 86 %), the floor being 2.6-3.4 ms per image at batches 36-100 here, i.e.
    # ~1.7-2.1x `grad`: 1.9.
    abort_fraction: MappingProxyType = field(default_factory=lambda: _frozen({AbortRule.NONE: 1.0,
                                                                             AbortRule.EXAMPLE: 0.60,
                                                                             AbortRule.WINDOW: 0.88}))
    # Gradient-equivalents of one JSMA pair iteration and one C&W iteration (extra bookkeeping per step).
    jsma_iteration: float = 1.2
    cw_iteration: float = 1.9
    # Gradient-equivalents of one PGD step per update rule (the projected rules do more per step).
    pgd_method: MappingProxyType = field(default_factory=lambda: _frozen({PGDMethod.LOGIT: 1.0,
                                                                         PGDMethod.SELECTIVE: 1.6,
                                                                         PGDMethod.ORTHOGONAL: 1.6,
                                                                         PGDMethod.SUM: 1.0}))

    @staticmethod
    def depth_factor(depth: int) -> float:
        # Residual blocks scale with depth; the stem, the head and per-call overheads do not (depth 8
        # measured at ~0.35x the per-image cost of depth 32).
        return 0.15 + 0.85 * (depth - 2) / 30.0

    def unit(self, kind: str, dataset, depth: int) -> float:
        """Estimated seconds for one image (`fwd` / `grad`) or one training step (`train_step`)."""
        return getattr(self, kind) * self.dataset_factor[Dataset.coerce(dataset)] * self.depth_factor(depth)

    def forward(self, dataset, depth: int, n: float) -> float:
        return n * self.unit("fwd", dataset, depth)

    def gradients(self, dataset, depth: int, n: float) -> float:
        return n * self.unit("grad", dataset, depth)

    def training(self, dataset, depth: int, steps: int, batch_size: int, precision=Precision.FLOAT32) -> float:
        speedup = self.bf16_train_speedup[Dataset.coerce(dataset)] if precision == Precision.BFLOAT16 else 1.0
        return steps * self.unit("train_step", dataset, depth) * batch_size / 128 / speedup

    def cw_gradients(self, settings) -> float:
        """Gradient-equivalents per image of a C&W run with `settings` (its abort rule's fraction included)."""
        rule = abort_rule_of(settings.get("abort_early", True), settings.get("abort_rule", DEFAULT_ABORT_RULE))
        return (settings.get("binary_search_steps", 9) * settings.get("max_iters", 1000) * self.abort_fraction[rule]
                * self.cw_iteration)

    def cwwb_gradients(self, settings) -> float:
        """Gradient-equivalents per image of C&W-wb: phase 1 (its `phase1_*` budget, else the same) + phase 2."""
        phase1 = {**settings, "binary_search_steps": settings.get("phase1_binary_search_steps",
                                                      settings.get("binary_search_steps", 9)),
                  "max_iters": settings.get("phase1_max_iters", settings.get("max_iters", 1000))}
        return self.cw_gradients(phase1) + self.cw_gradients(settings)

    def attack_gradients(self, attack, settings) -> float:
        """Gradient-equivalents per image of one run of `attack` with `settings`."""
        return _ATTACK_GRADIENTS[Attack.coerce(attack)](self, settings)


_ATTACK_GRADIENTS = {
    Attack.FGSM: lambda costs, settings: 1.0,
    Attack.BIM: lambda costs, settings: 10.0,
    Attack.ILCM: lambda costs, settings: 10.0,
    Attack.JSMA: lambda costs, settings: settings.get("max_iters", 50) * costs.jsma_iteration,
    Attack.CW: CostModel.cw_gradients,
    Attack.CW_HC: CostModel.cw_gradients,
}

COSTS = CostModel()
