"""Cells of the white-box, black-box and adaptive threat models (sections 4.4-4.5, appendix B.4).

    table3.k<kappa>.<obj>   C&W-wb (kappa 0: Table 3; kappa 5: appendix Table 2) on the main model with
                            its K-density detector: ratio of f2(x*) > 0 and mean distortion; Figure 4 images
    table4.<sub>-to-<tgt>   the kappa-0 C&W-wb examples of a ResNet-32 (substitute) fed to a ResNet-56
                            (target) judged by its *own* K-density detector: transfer rate and AUC
    worstcase.<obj>         every detector attacked end to end with every formulation (PGD rules, the
                            sum form per lambda, C&W-L2 with the detector term), per input the worst
                            case: robust accuracy with rejection vs eps (L-inf, L2), minimum distortion,
                            gradient-masking checks, Tramèr's claim check

The numbers come from `rcedetect.evaluation.threat_models` (`summarize_white_box`,
`transfer_evaluation`, `evaluation.worst_case`); the attacks run in cached chunks (`examples`), and Table 4
feeds exactly the Table 3 kappa-0 examples that fooled their substitute (as `transfer_table` would
recompute them: same targets, same attack bank, same seed).
"""

from dataclasses import dataclass

import numpy as np
import torch

from ...detectors import ConfidenceMetric, NonMEMetric, ThresholdDetector
from ...detectors.attackable import TappedScore
from ...detectors.supervised import baseline_inputs
from ...evaluation import auc_score, distortion
from ...evaluation.threat_models import summarize_white_box, transfer_evaluation
from ...evaluation.worst_case import WorstCaseBudget, summarize_worst_case, worst_case_examples
from ...inference import batched_outputs
from ...names import SUPERVISED_METRICS, Attack, Formulation, Metric, PGDMethod
from .. import schema
from ..examples import cwwb_examples
from ..jsonable import ints, sig, uint8_images
from .base import Cell


@dataclass(frozen=True)
class Table3Cell(Cell):
    """C&W-wb at margin `kappa` against the main model's K-density detector."""

    kappa: float
    objective: str

    spread = True

    @property
    def name(self):
        return schema.table3_cell(self.kappa, self.objective)

    def config(self, ctx):
        p = ctx.preset
        return {**ctx.base_config(0, self.objective), "attack": Attack.CW_WB, "kappa": float(self.kappa),
                "n": p.cwwb_n, "settings": p.cwwb_settings_for(self.kappa)}

    def compute(self, ctx, progress):
        p, objective, kappa = ctx.preset, self.objective, float(self.kappa)
        result, seconds = cwwb_examples(ctx, kappa, objective, progress=progress, hi=0.95)
        n = p.cwwb_n
        x, y = ctx.images(n)
        clean = ctx.clean_outputs(0, objective, n)
        clean_pred = clean.logits.argmax(1)
        row = summarize_white_box(result, x, y, clean_pred)
        # Beyond Table 3: the detector at its FPR threshold (f2 <= 0 is a stricter notion of "fooled").
        kd = ctx.kd(0, objective)
        with torch.no_grad():
            adv = batched_outputs(ctx.model(0, objective), result.x_adv, device=ctx.device)
            kd_clean, kd_adv = kd.score(clean).double().numpy(), kd.score(adv).double().numpy()
        adv_pred = adv.logits.argmax(1)
        # C&W-wb's counted set: clean image right and the target reached (summarize_white_box's).
        counted = ((clean_pred == y) & result.fooled).numpy()
        threshold = ctx.thresholds(0, objective)[Metric.KD]
        dist = distortion(result.x_adv, x)
        out = {
            "attack": Attack.CW_WB, "kappa": kappa, "objective": objective, "depth": p.depths[0],
            "settings": p.cwwb_settings_for(kappa), **row,
            "kd_threshold": threshold,
            "kd_rejected_percent": (float(100 * np.mean(kd_adv[counted] <= threshold)) if counted.any() else None),
            "kd_auc": auc_score(kd_clean[counted], kd_adv[counted]) if counted.any() else None,
            "attack_seconds": seconds, "seconds_per_example": seconds / n,
            schema.PER_EXAMPLE: {schema.LABEL: ints(y), "target": ints(result.target),
                                 schema.CLEAN_PRED: ints(clean_pred), schema.ADV_PRED: ints(adv_pred),
                                 "fooled": ints(result.fooled), "f2": sig(result.f2),
                                 "distortion": sig(dist),
                                 "kd_clean": sig(kd_clean), "kd_adv": sig(kd_adv)},
        }
        if kappa == 0:
            # Figure 4 shows what the attack does: the first images it fully succeeded on (official
            # criterion), topped up with the others only when too few succeeded.
            full = ((clean_pred == y) & result.fooled & (result.f2_attack <= 0)).numpy()
            order = np.concatenate([np.flatnonzero(full), np.flatnonzero(~full)])[:min(p.figure4_images, n)]
            pick = torch.as_tensor(order, dtype=torch.long)
            out[schema.FIGURE4] = {"clean": uint8_images(x[pick]), "adversarial": uint8_images(result.x_adv[pick]),
                                   "index": ints(pick), "label": ints(y[pick]), "target": ints(result.target[pick]),
                                   "adv_pred": ints(adv_pred[pick]), "succeeded": ints(torch.as_tensor(full[order])),
                                   "distortion": sig(dist[order])}
        return out

    def spread_n(self, ctx):
        return ctx.preset.cwwb_n

    def cost(self, ctx, costs):
        p = ctx.preset
        # Two C&W phases (ordinary C&W, then with the attack bank's K-density term).
        return costs.gradients(ctx.dataset, p.depths[0],
                               p.cwwb_n * costs.cwwb_gradients(p.cwwb_settings_for(self.kappa))) + 2


def kd_detector(ctx, which: int, objective) -> ThresholdDetector:
    """A model's own K-density detector with its threshold at the preset's FPR on held-out clean images."""
    return ThresholdDetector(ctx.kd(which, objective), fpr=ctx.preset.fpr).calibrate(
        ctx.calibration_outputs(which, objective))


@dataclass(frozen=True)
class Table4Cell(Cell):
    """The kappa-0 C&W-wb examples of the main model (`substitute`) fed to the black-box `target`."""

    substitute: str
    target: str

    spread = True

    @property
    def name(self):
        return schema.table4_cell(self.substitute, self.target)

    def config(self, ctx):
        return {"substitute": Table3Cell(0.0, self.substitute).config(ctx), "target": ctx.base_config(1, self.target)}

    def compute(self, ctx, progress):
        n = ctx.preset.cwwb_n
        result, _ = cwwb_examples(ctx, 0.0, self.substitute, progress=progress, hi=0.5)
        x, y = ctx.images(n)
        sub_clean = ctx.clean_outputs(0, self.substitute, n).logits.argmax(1)
        fed = (sub_clean == y) & result.fooled  # crafted: they fool their substitute
        out = {"substitute": ctx.tag(0, self.substitute), "target": ctx.tag(1, self.target), "n": n,
               "n_fed": int(fed.sum())}
        if not fed.any():
            return {**out, "n_target_clean_correct": 0, "n_counted": 0, "transfer_rate_percent": None, "auc": None,
                    "adversarial_rejected_percent": None}
        row = transfer_evaluation(ctx.model(1, self.target), kd_detector(ctx, 1, self.target), ctx.on_device(x[fed]),
                                  y[fed].to(ctx.device), ctx.on_device(result.x_adv[fed]))
        return {**out, **row}

    def spread_n(self, ctx):
        return ctx.preset.cwwb_n

    def cost(self, ctx, costs):
        return costs.forward(ctx.dataset, ctx.preset.depths[1], 2 * ctx.preset.cwwb_n) + 1


@dataclass(frozen=True)
class WorstCaseCell(Cell):
    """The worst-case adaptive evaluation of the main model with each detector of `worst_case_metrics`
    at the preset's FPR (`evaluation.worst_case`), its images attacked in cached chunks: every stored
    tensor has one row per image, so the chunks concatenate exactly before the summary."""

    objective: str

    spread = True

    @property
    def name(self):
        return schema.worst_case_cell(self.objective)

    def config(self, ctx):
        p = ctx.preset
        return {**ctx.base_config(0, self.objective), "evaluation": "worst-case", "n": p.worst_case_n,
                "metrics": list(p.worst_case_metrics), "budget": WorstCaseBudget(**p.worst_case).to_dict()}

    def detectors(self, ctx) -> dict:
        """{metric: ThresholdDetector at the preset's FPR}; the supervised baselines as `TappedScore`s
        (differentiable through their layers), their thresholds from the Baselines table's scores."""
        p, objective = ctx.preset, self.objective
        metrics = {Metric.CONFIDENCE: ConfidenceMetric, Metric.NON_ME: NonMEMetric,
                   Metric.KD: lambda: ctx.kd(0, objective), Metric.MAHALANOBIS: lambda: ctx.mahalanobis(0, objective)}
        cal = ctx.calibration_outputs(0, objective)
        out = {}
        for m in map(Metric.coerce, p.worst_case_metrics):
            if m in SUPERVISED_METRICS:
                model, fitted = ctx.model(0, objective), ctx.supervised(0, objective)[0][m]
                inputs, _ = baseline_inputs(model, {m: fitted}, ctx.test_set.images[ctx.calibration_index],
                                            device=ctx.device)
                out[m.value] = ThresholdDetector(TappedScore(model, fitted), fpr=p.fpr).calibrate(inputs[m])
            else:
                out[m.value] = ThresholdDetector(metrics[m](), fpr=p.fpr).calibrate(cal)
        return out

    def compute(self, ctx, progress):
        p, objective = ctx.preset, self.objective
        n = p.worst_case_n
        budget = WorstCaseBudget(**p.worst_case)
        x, y = ctx.images(n)
        model = ctx.model(0, objective)
        detectors = self.detectors(ctx)
        config = {**self.config(ctx), "model": ctx.model_identity(0, objective)}

        def chunk(start, stop):
            return worst_case_examples(model, detectors, ctx.on_device(x[start:stop]), y[start:stop].to(ctx.device),
                                       budget=budget, seed=ctx.seed, row_ids=torch.arange(start, stop))

        tensors, seconds = ctx.store.chunked(f"{ctx.tag(0, objective)}.worst-case", config, n, p.chunk, chunk,
                                             on_chunk=progress.chunk_callback("worst case", 0.0, 1.0))
        result = summarize_worst_case(tensors, budget=budget, thresholds={m: d.threshold_ for m, d in detectors.items()},
                                      fpr=p.fpr, dataset=ctx.dataset, seconds=seconds)
        result.update({"objective": objective, "depth": p.depths[0], "seed": ctx.seed,
                       "attack_seconds": seconds, "seconds_per_example": seconds / n})
        return result

    def spread_n(self, ctx):
        return ctx.preset.worst_case_n

    def cost(self, ctx, costs):
        p = ctx.preset
        b = WorstCaseBudget(**p.worst_case)
        radii = sum(sum(1 for e in grid if e > 0) for grid in b.eps.values())
        pgd = sum(costs.pgd_method[PGDMethod.coerce(f)] for label, f, _ in b.attacks if f != Formulation.CW_L2)
        per_detector = b.steps * b.restarts * pgd * (radii + (1 if b.large_eps else 0) + 0.5 * len(b.eps))
        if any(f == Formulation.CW_L2 for _, f, _ in b.attacks):
            per_detector += costs.cw_gradients(b.cw)
        # Cascading and per-example early stop: measured on the quick MNIST models, about a third of it.
        fraction = 0.35 if b.cascade else 0.6
        grads = p.worst_case_n * fraction * (len(p.worst_case_metrics) * per_detector + b.steps * b.restarts * radii)
        return costs.gradients(ctx.dataset, p.depths[0], grads) + 1
