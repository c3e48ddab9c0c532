"""Cells of the trained models: Table 1 rows and each model's detector calibration."""

import json
from dataclasses import dataclass

import torch

from ...checkpoints import SIDECAR_FILE
from ...detectors import threshold_at_fpr
from .. import schema
from .base import Cell


@dataclass(frozen=True)
class TrainCell(Cell):
    """Trains the model (the one place training happens) and records its Table 1 row.

    which: 0 the main model, 1 the black-box target; depth: `preset.depths[which]`.
    """

    which: int
    depth: int
    objective: str
    trains = True

    @property
    def name(self):
        return schema.train_cell(self.depth, self.objective)

    def config(self, ctx):
        return {"dataset": ctx.dataset, "model": ctx.model_identity(self.which, self.objective)}

    def compute(self, ctx, progress):
        directory = ctx.train(self.which, self.objective)
        meta = json.loads((directory / SIDECAR_FILE).read_text())
        metrics, config = meta.get("metrics", {}), meta["config"]
        return {"depth": config["depth"], "objective": self.objective, "steps": config["steps"],
                "test_error": metrics.get("test_error"), "test_accuracy": metrics.get("test_accuracy"),
                "train_seconds": metrics.get("train_seconds"), "train_device": metrics.get("device"),
                "checkpoint": str(directory.relative_to(ctx.run_dir))}

    def cost(self, ctx, costs):
        config = ctx.train_config(self.which, self.objective)
        return costs.training(ctx.dataset, self.depth, config.steps, config.batch_size, config.precision) + 2


@dataclass(frozen=True)
class DetectorCell(Cell):
    """The model's K-density bank, its clean / calibration scores and the thresholds at the FPR."""

    which: int
    depth: int
    objective: str

    @property
    def name(self):
        return schema.detector_cell(self.depth, self.objective)

    def config(self, ctx):
        return {**ctx.base_config(self.which, self.objective), "eval_n": ctx.max_eval_n()}

    def compute(self, ctx, progress):
        which, objective, fpr = self.which, self.objective, ctx.preset.fpr
        kd = ctx.kd(which, objective)
        n = ctx.max_eval_n()
        clean = ctx.clean_outputs(which, objective, n)
        cal = ctx.calibration_outputs(which, objective)
        labels = ctx.test_set.labels
        with torch.no_grad():
            scores = {m: f(cal) for m, f in ctx.metrics(which, objective).items()}
        return {"depth": self.depth, "objective": objective,
                "bandwidth_sq": kd.bandwidth_sq, "bank_size": int(kd.bank_.shape[0]),
                "calibration_n": int(cal.logits.shape[0]), "fpr": fpr,
                "thresholds": {m: threshold_at_fpr(s, fpr) for m, s in scores.items()},
                "calibration_score_mean": {m: float(s.double().mean()) for m, s in scores.items()},
                "calibration_accuracy": float((cal.logits.argmax(1) == labels[ctx.calibration_index]).float().mean()),
                "eval_n": n,
                "eval_accuracy": float((clean.logits.argmax(1) == labels[ctx.eval_index(n)]).float().mean())}

    def cost(self, ctx, costs):
        p = ctx.preset
        bank = p.kd_per_class * ctx.num_classes
        return costs.forward(ctx.dataset, self.depth, bank + ctx.max_eval_n() + p.calibration_n) + 1
