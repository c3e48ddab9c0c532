"""Cells of the oblivious threat model (section 4.3): Table 2, Figures 1 and 3, appendix Figures 1 and 4.

The attacked images are a prefix of the run's permutation; the paper's counting filter (clean input
classified correctly AND adversarial twin misclassified) selects the pairs behind every AUC and
distortion; AUC treats normal inputs as positive with higher score = more normal; confidence is
ranked by its log-odds (the ranking of F(x)_y, without float32 ties at 1.0); distortion is
sqrt(mean((x* - x)^2)) on the 0-255 scale.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ...attacks import random_noise
from ...detectors import confidence
from ...evaluation import auc_score, counting_mask, distortion, robust_accuracy_with_rejection
from ...inference import batched_outputs
from ...names import Attack, Metric
from .. import schema
from ..examples import attack_examples
from ..jsonable import ints, mean_or_none, sig
from .base import Cell

# The x-axis of an attack's Figure 3 panel: JSMA's budget is its per-feature offset theta.
EPS_AXIS = {Attack.JSMA: "theta"}


def detection_result(ctx, which: int, objective, x, y, x_adv) -> dict:
    """Accuracy, the counting filter, distortion, AUC / detection rate / robust accuracy per metric,
    and the per-example block the report's bootstrap intervals are drawn from."""
    n = x.shape[0]
    fpr = ctx.preset.fpr
    clean = ctx.clean_outputs(which, objective, n)
    adv = batched_outputs(ctx.model(which, objective), x_adv, device=ctx.device)
    clean_pred, adv_pred = clean.logits.argmax(1), adv.logits.argmax(1)
    mask = counting_mask(y, clean_pred, adv_pred)
    dist = distortion(x_adv, x)
    thresholds = ctx.thresholds(which, objective)
    out = {"n": n, "clean_accuracy": float((clean_pred == y).float().mean()),
           "adversarial_accuracy": float((adv_pred == y).float().mean()),
           "n_counted": int(mask.sum()), "distortion": mean_or_none(dist[mask]),
           "distortion_all": float(dist.mean()), "fpr": fpr,
           schema.AUC: {}, schema.DETECTION_RATE: {}, schema.ROBUST_ACCURACY: {}, "thresholds": thresholds}
    clean_scores, adv_scores = {}, {}
    counted = mask.any()
    out[schema.AUC_OFFICIAL_TIES] = {}
    with torch.no_grad():
        for m, score in ctx.metrics(which, objective).items():
            cs, ads = score(clean).double().numpy(), score(adv).double().numpy()
            clean_scores[m], adv_scores[m] = cs, ads
            out[schema.AUC][m] = auc_score(cs[mask], ads[mask]) if counted else None
            # The authors' AUC.m (ties count 0) on the score as they computed it: confidence as the
            # float32 softmax maximum, where saturated 1.0s tie (our log-odds ranking has no ties).
            oc, oa = ((confidence(clean).double().numpy(), confidence(adv).double().numpy())
                      if m == Metric.CONFIDENCE else (cs, ads))
            out[schema.AUC_OFFICIAL_TIES][m] = auc_score(oc[mask], oa[mask], ties="official") if counted else None
            out[schema.DETECTION_RATE][m] = float(np.mean(ads[mask] <= thresholds[m])) if counted else None
            out[schema.ROBUST_ACCURACY][m] = robust_accuracy_with_rejection(y, adv_pred, ads, thresholds[m])
    out[schema.PER_EXAMPLE] = {
        schema.LABEL: ints(y), schema.CLEAN_PRED: ints(clean_pred), schema.ADV_PRED: ints(adv_pred),
        "distortion": sig(dist),
        schema.CLEAN_SCORES: {m: sig(v) for m, v in clean_scores.items()},
        schema.ADV_SCORES: {m: sig(v) for m, v in adv_scores.items()},
    }
    return out


def _correct(ctx, which, objective, x_adv, y) -> torch.Tensor:
    """Per example: whether the model still classifies x_adv as its label (bool (n,))."""
    return batched_outputs(ctx.model(which, objective), x_adv, device=ctx.device).logits.argmax(1) == y


def _accuracy(ctx, which, objective, x_adv, y) -> float:
    return float(_correct(ctx, which, objective, x_adv, y).float().mean())


def _clean_accuracy(ctx, objective, n) -> float:
    pred = ctx.clean_outputs(0, objective, n).logits.argmax(1)
    return float((pred == ctx.images(n)[1]).float().mean())


@dataclass(frozen=True)
class Table2Cell(Cell):
    """One attack at the preset's single eps against the main model: a row of Table 2."""

    attack: Attack
    objective: str

    spread = True

    @property
    def name(self):
        return schema.table2_cell(self.attack, self.objective)

    def _args(self, ctx):
        p = ctx.preset
        return p.n_attack[self.attack], p.eps.get(self.attack), dict(p.attack_settings.get(self.attack, {}))

    def config(self, ctx):
        n, eps, settings = self._args(ctx)
        return {**ctx.base_config(0, self.objective), "attack": self.attack, "n": n, "eps": eps,
                "settings": settings}

    def compute(self, ctx, progress):
        n, eps, settings = self._args(ctx)
        tensors, seconds = attack_examples(ctx, 0, self.objective, self.attack, n, eps=eps, settings=settings,
                                           progress=progress, hi=0.95)
        x, y = ctx.images(n)
        out = detection_result(ctx, 0, self.objective, x, y, tensors["x_adv"])
        return {"attack": self.attack, "objective": self.objective, "depth": ctx.preset.depths[0],
                "eps": eps, "settings": settings,
                "attack_success_rate": float(tensors["success"].float().mean()),
                "attack_seconds": seconds, "seconds_per_example": seconds / n, **out}

    def spread_n(self, ctx):
        return self._args(ctx)[0]

    def cost(self, ctx, costs):
        n, _, settings = self._args(ctx)
        depth = ctx.preset.depths[0]
        return (costs.gradients(ctx.dataset, depth, n * costs.attack_gradients(self.attack, settings))
                + costs.forward(ctx.dataset, depth, 2 * n) + 1)


@dataclass(frozen=True)
class Fig3Cell(Cell):
    """Accuracy on adversarial examples over the preset's eps grid (Figure 3)."""

    attack: Attack
    objective: str

    spread = True

    @property
    def name(self):
        return schema.fig3_cell(self.attack, self.objective)

    def _n(self, ctx):
        p = ctx.preset
        return {Attack.JSMA: p.fig3_jsma_n}.get(self.attack, p.fig3_n)  # JSMA is the slow one

    def _settings(self, ctx):
        return dict(ctx.preset.attack_settings.get(self.attack, {}))

    def config(self, ctx):
        n, settings = self._n(ctx), self._settings(ctx)
        grid = ctx.preset.fig3_eps
        return {**ctx.base_config(0, self.objective), "attack": self.attack, "grid": list(grid),
                "runs": [{"eps": e, "settings": settings, "n": n} for e in grid]}

    def compute(self, ctx, progress):
        n, settings, grid = self._n(ctx), self._settings(ctx), ctx.preset.fig3_eps
        accuracy, correct, seconds, success = [], [], [], []
        _, y = ctx.images(n)
        for i, eps in enumerate(grid):
            tensors, took = attack_examples(ctx, 0, self.objective, self.attack, n, eps=eps, settings=settings,
                                            label=f"fig3-{self.attack}-{eps:g}", progress=progress,
                                            lo=i / len(grid), hi=(i + 1) / len(grid))
            right = _correct(ctx, 0, self.objective, tensors["x_adv"], y)
            accuracy.append(float(right.float().mean()))
            correct.append(ints(right))  # per example, for the paired test of the monotonicity check
            success.append(float(tensors["success"].float().mean()))
            seconds.append(took)
        return {"attack": self.attack, "objective": self.objective, "x_axis": EPS_AXIS.get(self.attack, "eps"),
                "eps": list(grid), "n": n, "accuracy": accuracy, "correct": correct, "attack_success_rate": success,
                "clean_accuracy": _clean_accuracy(ctx, self.objective, n), "attack_seconds": seconds}

    def spread_n(self, ctx):
        return self._n(ctx)

    def cost(self, ctx, costs):
        p, depth = ctx.preset, ctx.preset.depths[0]
        runs = len(p.fig3_eps)
        per_run = self._n(ctx) * costs.attack_gradients(self.attack, self._settings(ctx))
        return (costs.gradients(ctx.dataset, depth, per_run * runs) + costs.forward(ctx.dataset, depth, p.fig3_n * runs)
                + 1)


@dataclass(frozen=True)
class RandCell(Cell):
    """Test error on RAND noise (appendix Figure 1) and the noisy inputs of appendix Figures 2-3."""

    objective: str

    @property
    def name(self):
        return schema.rand_cell(self.objective)

    def config(self, ctx):
        p = ctx.preset
        return {**ctx.base_config(0, self.objective), "eps": list(p.rand_eps), "n": p.rand_n,
                "hist_eps": p.hist_rand_eps, "hist_n": min(p.rand_n, 1000)}

    def compute(self, ctx, progress):
        p = ctx.preset
        model = ctx.model(0, self.objective)
        index = ctx.permutation[:p.rand_n]  # RAND sets no threshold: the whole test set may be used
        x, y = ctx.test_set.float_images(index), ctx.test_set.labels[index]
        errors = []
        for i, eps in enumerate(p.rand_eps):
            noisy = random_noise(x, eps=eps, seed=ctx.seed).x_adv
            pred = batched_outputs(model, noisy, device=ctx.device).logits.argmax(1)
            errors.append(float((pred != y).float().mean()))
            progress.fraction((i + 1) / (len(p.rand_eps) + 1))
        hist_n = min(p.rand_n, 1000)
        kd = ctx.kd(0, self.objective)
        clean_out = batched_outputs(model, x[:hist_n], device=ctx.device)
        noisy_out = batched_outputs(model, random_noise(x[:hist_n], eps=p.hist_rand_eps, seed=ctx.seed).x_adv,
                                    device=ctx.device)
        with torch.no_grad():
            kd_clean, kd_noisy = kd.score(clean_out), kd.score(noisy_out)
        return {"objective": self.objective, "eps": list(p.rand_eps), "n": p.rand_n, "error": errors,
                schema.HIST: {"eps": p.hist_rand_eps, "n": hist_n, "kd_clean": sig(kd_clean),
                              "kd_noisy": sig(kd_noisy),
                              "noisy_error": float((noisy_out.logits.argmax(1) != y[:hist_n]).float().mean())}}

    def cost(self, ctx, costs):
        p = ctx.preset
        return costs.forward(ctx.dataset, p.depths[0], p.rand_n * len(p.rand_eps) + 2000) + 1


@dataclass(frozen=True)
class TsneCell(Cell):
    """t-SNE of the final hidden features of clean test images (Figure 1 right)."""

    objective: str

    @property
    def name(self):
        return schema.tsne_cell(self.objective)

    def config(self, ctx):
        p = ctx.preset
        return {**ctx.base_config(0, self.objective), "n": p.tsne_n, "perplexity": p.tsne_perplexity,
                "method": "sklearn.manifold.TSNE init=pca"}

    def compute(self, ctx, progress):
        from sklearn.manifold import TSNE

        p = ctx.preset
        n = p.tsne_n
        features = ctx.clean_outputs(0, self.objective, n).features.double().numpy()
        embedding = TSNE(n_components=2, perplexity=p.tsne_perplexity, init="pca", learning_rate="auto",
                         random_state=ctx.seed).fit_transform(features)
        return {"objective": self.objective, "n": n, "perplexity": p.tsne_perplexity,
                "labels": ints(ctx.images(n)[1]), "x": sig(embedding[:, 0], 5), "y": sig(embedding[:, 1], 5)}

    def cost(self, ctx, costs):
        return 2 + ctx.preset.tsne_n * 0.008


@dataclass(frozen=True)
class CwcCell(Cell):
    """Accuracy under C&W with one binary-search step at each fixed c (appendix Figure 4)."""

    objective: str

    spread = True

    @property
    def name(self):
        return schema.cwc_cell(self.objective)

    def config(self, ctx):
        p = ctx.preset
        return {**ctx.base_config(0, self.objective), "c": list(p.cw_fixed_c), "n": p.cw_fixed_n,
                "settings": dict(p.cw_fixed_settings)}

    @staticmethod
    def _settings(p, c) -> dict:
        return {**p.cw_fixed_settings, "binary_search_steps": 1, "initial_const": c}

    def compute(self, ctx, progress):
        p = ctx.preset
        n, grid = p.cw_fixed_n, p.cw_fixed_c
        _, y = ctx.images(n)
        accuracy, success, seconds = [], [], []
        for i, c in enumerate(grid):
            tensors, took = attack_examples(ctx, 0, self.objective, Attack.CW, n, settings=self._settings(p, c),
                                            label=f"cwc-{c:g}", progress=progress,
                                            lo=i / len(grid), hi=(i + 1) / len(grid))
            accuracy.append(_accuracy(ctx, 0, self.objective, tensors["x_adv"], y))
            success.append(float(tensors["success"].float().mean()))
            seconds.append(took)
        return {"objective": self.objective, "c": list(grid), "n": n, "accuracy": accuracy,
                "attack_success_rate": success, "attack_seconds": seconds,
                "clean_accuracy": _clean_accuracy(ctx, self.objective, n)}

    def spread_n(self, ctx):
        return ctx.preset.cw_fixed_n

    def cost(self, ctx, costs):
        p = ctx.preset
        per_image = sum(costs.cw_gradients(self._settings(p, c)) for c in p.cw_fixed_c)
        return costs.gradients(ctx.dataset, p.depths[0], p.cw_fixed_n * per_image) + 1
