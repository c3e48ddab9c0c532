"""The Baselines cell (beyond the paper): LID (Ma et al. 2018) and Mahalanobis (Lee et al. 2018, LR and
unsupervised) on the same models, attacks and counted pairs as Table 2.

The supervised detectors are fitted by `detectors.supervised`'s honest protocol: FGSM at Table 2's
eps on training images (seen attack); every other Table 2 attack is unseen. The unsupervised
Mahalanobis score is fitted on the K-density bank (clean training images only). The adversarial
examples are Table 2's own (`attack_examples` with Table 2's arguments: cache hits, no re-attacking);
thresholds at the preset's FPR on the same held-out calibration images as the paper's metrics.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch

from ...detectors import threshold_at_fpr
from ...detectors.supervised import baseline_inputs
from ...evaluation import auc_score, counting_mask
from ...inference import batched_outputs
from ...names import Metric
from .. import schema
from ..examples import attack_examples
from ..jsonable import ints, sig
from .base import Cell


def _table2_args(preset, attack):
    return preset.n_attack[attack], preset.eps.get(attack), dict(preset.attack_settings.get(attack, {}))


@dataclass(frozen=True)
class BaselinesCell(Cell):
    """LID, Mahalanobis-LR and unsupervised Mahalanobis on every Table 2 attack of one main model."""

    objective: str

    @property
    def name(self):
        return schema.baselines_cell(self.objective)

    def config(self, ctx):
        p = ctx.preset
        attacks = {}
        for attack in schema.TABLE2_ATTACKS:
            n, eps, settings = _table2_args(p, attack)
            attacks[attack.value] = {"n": n, "eps": eps, "settings": settings}
        return {**ctx.base_config(0, self.objective), "protocol": ctx.fit_protocol().to_dict(), "attacks": attacks,
                "metrics": [m.value for m in schema.BASELINES]}

    def compute(self, ctx, progress):
        p, obj = ctx.preset, self.objective
        model = ctx.model(0, obj)
        protocol = ctx.fit_protocol()
        t0 = time.perf_counter()
        supervised, examples, supervised_seconds = ctx.supervised(0, obj)
        fitted = dict(supervised)
        bank = ctx.kd_bank(0, obj)
        fitted[Metric.MAHALANOBIS] = ctx.mahalanobis(0, obj)
        fit_seconds = supervised_seconds + time.perf_counter() - t0
        progress.fraction(0.4)

        t1 = time.perf_counter()

        def scores(images) -> dict:
            inputs, _ = baseline_inputs(model, fitted, images, device=ctx.device)
            with torch.no_grad():
                return {m: fitted[m].score(inputs[m]).double().cpu().numpy() for m in schema.BASELINES}

        calibration = scores(ctx.test_set.images[ctx.calibration_index])
        thresholds = {m: threshold_at_fpr(torch.from_numpy(calibration[m]), p.fpr) for m in schema.BASELINES}
        n_max = max(_table2_args(p, a)[0] for a in schema.TABLE2_ATTACKS)
        x, y = ctx.images(n_max)
        clean = scores(x)
        clean_pred = ctx.clean_outputs(0, obj, n_max).logits.argmax(1)
        results, scored = {}, ctx.calibration_index.numel() + n_max
        for i, attack in enumerate(schema.TABLE2_ATTACKS):
            n, eps, settings = _table2_args(p, attack)
            tensors, _ = attack_examples(ctx, 0, obj, attack, n, eps=eps, settings=settings)  # Table 2's
            x_adv = tensors["x_adv"]
            adv = scores(x_adv)
            adv_pred = batched_outputs(model, x_adv, device=ctx.device).logits.argmax(1)
            mask = counting_mask(y[:n], clean_pred[:n], adv_pred)
            counted = bool(mask.any())
            cs = {m: clean[m][:n] for m in schema.BASELINES}
            results[attack.value] = {
                schema.SEEN: attack == protocol.attack, "n": n, "n_counted": int(mask.sum()),
                schema.AUC: {m: auc_score(cs[m][mask], adv[m][mask]) if counted else None for m in schema.BASELINES},
                schema.DETECTION_RATE: {m: float(np.mean(adv[m][mask] <= thresholds[m])) if counted else None
                                        for m in schema.BASELINES},
                schema.PER_EXAMPLE: {
                    schema.LABEL: ints(y[:n]), schema.CLEAN_PRED: ints(clean_pred[:n]), schema.ADV_PRED: ints(adv_pred),
                    schema.CLEAN_SCORES: {m: sig(v) for m, v in cs.items()},
                    schema.ADV_SCORES: {m: sig(v) for m, v in adv.items()}},
            }
            scored += n
            progress.fraction(0.4 + 0.6 * (i + 1) / len(schema.TABLE2_ATTACKS))
        return {"objective": obj, "depth": p.depths[0], "protocol": protocol.to_dict(), "fpr": p.fpr,
                "fit": {"split": "train", "attacked": examples.attacked, "counted": int(examples.labels.numel()),
                        "attack_success_rate": examples.attack_success_rate, "gaussian_n": protocol.n_gaussian,
                        "mahalanobis_bank": int(bank["labels"].numel())},
                "thresholds": thresholds, "scored_images": int(scored),
                "fit_seconds": fit_seconds, "score_seconds": time.perf_counter() - t1,
                schema.ATTACKS_BLOCK: results}

    def cost(self, ctx, costs):
        p, depth = ctx.preset, ctx.preset.depths[0]
        protocol = p.baseline_protocol
        adv = sum(_table2_args(p, a)[0] for a in schema.TABLE2_ATTACKS)
        n_max = max(_table2_args(p, a)[0] for a in schema.TABLE2_ATTACKS)
        return (costs.gradients(ctx.dataset, depth, protocol["n"])
                + costs.forward(ctx.dataset, depth, 4 * protocol["n"] + protocol["n_gaussian"] + p.calibration_n
                                + n_max + 2 * adv) + 2)
