"""The sequence of cells behind `rcedetect reproduce`: every table and figure of Pang et al. 2018.

    from rcedetect.reproduce import Reproduction
    Reproduction("mnist", "quick", "runs/mnist-quick").run()

Cells, in the order they run (names are the JSON files under RUN/cells/):

    train.resnet32-{ce,rce}          Table 1 rows (and the models everything else attacks)
    detector.resnet32-{ce,rce}       K-density bank, clean scores, FPR thresholds
    table2.<attack>.{ce,rce}         Table 2: distortion and AUC of confidence / non-ME / K-density,
                                     attack in fgsm, bim, ilcm, jsma, cw, cw-hc; wall time -> appendix Table 1
    tsne.{ce,rce}                    Figure 1 right
    rand.{ce,rce}                    appendix Figure 1 (error on RAND noise), noisy inputs of appendix Figures 2-3
    fig3.<attack>.{ce,rce}           Figure 3: accuracy on adversarial examples vs eps
    table3.k{0,5}.{ce,rce}           Table 3 (C&W-wb, kappa 0) and appendix Table 2 (kappa 5); Figure 4 images
    train.resnet56-{ce,rce}          Table 1 rows of the black-box targets
    detector.resnet56-{ce,rce}
    table4.{ce,rce}-to-{ce,rce}      Table 4: C&W-wb examples of a ResNet-32 fed to a ResNet-56
    cwc.{ce,rce}                     appendix Figure 4: accuracy under C&W with a fixed c
    adaptive.{ce,rce}                the adaptive-attack curve (beyond the paper, issue 5)

Appendix Figures 2-3 are drawn from the `rand` and `table2` cells, appendix Table 1 from the
measured attack times in `table2` and `table3`. Conventions everywhere: images in [0, 1]; the
attacked images are a prefix of one seeded permutation of the test set; the paper's counting filter
(clean input classified correctly AND adversarial twin misclassified) selects the pairs behind every
AUC and distortion; AUC treats normal inputs as positive with higher score = more normal; K-density
uses the authors' bandwidths (sigma^2 = 1/0.26 CE, 0.1/0.26 RCE), 1 000 random training features per
class, scored against the predicted class; confidence is ranked by its log-odds (the same ranking
as F(x)_y, without float32 ties at 1.0); distortion is sqrt(mean((x* - x)^2)) on the 0-255 scale.
"""

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..attacks import ATTACKS, random_noise
from ..checkpoints import SIDECAR_FILE, WEIGHTS_FILE, atomic_write_json, load_checkpoint
from ..config import preset_config
from ..data import DATASETS, load_dataset
from ..detectors import ConfidenceMetric, KernelDensity, NonMEMetric, default_bandwidth_sq, threshold_at_fpr
from ..devices import resolve_device
from ..errors import InputError
from ..evaluation import auc_score, counting_mask, distortion, robust_accuracy_with_rejection
from ..inference import batched_outputs
from ..models import ModelOutput
from . import threat_cells
from .cells import CellStore, normalise
from .jsonable import ints as _ints, mean_or_none as _mean_or_none, sig as _sig
from .presets import (EARLY_ABORT, FIG3_ATTACKS, TABLE2_ATTACKS, ReproPreset, get_preset, unit_cost)

RUN_FORMAT = "rcedetect-run-v1"
OBJECTIVES = ("ce", "rce")
PERMUTATION_STREAM = 7_000_003  # the test-set permutation: its own stream of the preset seed


@dataclass
class Cell:
    name: str
    config: dict
    fn: Callable[[], dict]
    cost: float  # estimated seconds on a quiet 2-core CPU: weights the overall ETA


class _Progress:
    """The top-level display: which cell runs, its progress, and the overall ETA (tqdm)."""

    def __init__(self, cells, done, enabled: bool):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.total = sum(c.cost for c in cells)
        initial = sum(c.cost for c, d in zip(cells, done) if d)
        self.bar = tqdm(total=self.total, initial=initial, position=0, dynamic_ncols=True, disable=not enabled,
                        mininterval=0.5,
                        bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")
        self.count = len(cells)
        self.cell_cost = 0.0
        self.cell_done = 0.0
        self.inner = None

    def start(self, index: int, cell: Cell) -> None:
        self.cell_cost, self.cell_done = cell.cost, 0.0
        self.bar.set_description_str(f"[{index + 1}/{self.count}] {cell.name}")

    def fraction(self, done: float) -> None:
        """The running cell is `done` (0..1) complete."""
        step = self.cell_cost * min(1.0, max(done, 0.0)) - self.cell_done
        if step > 0:
            self.bar.update(step)
            self.cell_done += step

    def finish(self) -> None:
        self.fraction(1.0)
        self.close_inner()

    def chunk_callback(self, label: str, lo: float = 0.0, hi: float = 1.0):
        """A `CellStore.chunked` callback showing a per-cell bar and moving the overall one."""
        from tqdm.auto import tqdm

        self.close_inner()
        state = {}

        def on_chunk(done_rows, n):
            if self.enabled and self.inner is None:
                self.inner = tqdm(total=n, desc=f"  {label}", unit="img", position=1, leave=False,
                                  dynamic_ncols=True, mininterval=0.5)
                state["last"] = 0
            if self.inner is not None:
                self.inner.update(done_rows - state["last"])
                state["last"] = done_rows
            self.fraction(lo + (hi - lo) * done_rows / max(n, 1))

        return on_chunk

    def close_inner(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        self.close_inner()
        self.bar.close()


class Reproduction:
    """One reproduction run: `run()` computes (or skips) every cell into `out`.

    Args:
        dataset: 'mnist' or 'cifar10'.
        preset: 'quick', 'paper', 'toy', or a `ReproPreset`.
        out: the run folder (models, cells, cache, report).
        device: 'auto', 'cpu' or 'cuda'.
        data_dir: dataset folder (default: $RCEDETECT_DATA_DIR, else the cache folder).
        progress: show the progress display (tqdm).
    """

    def __init__(self, dataset: str, preset="quick", out=None, *, device="auto", data_dir=None, progress=True):
        self.preset = preset if isinstance(preset, ReproPreset) else get_preset(dataset, preset)
        if self.preset.dataset != dataset:
            raise InputError(f"preset is for {self.preset.dataset}, not {dataset}")
        self.dataset = dataset
        self.run_dir = Path(out if out is not None else f"runs/{dataset}-{self.preset.name}")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.data_dir = data_dir
        self.progress_enabled = progress
        self.store = CellStore(self.run_dir, device=self.device)
        self.seed = self.preset.seed
        self._models, self._kds, self._clean, self._cal = {}, {}, {}, {}
        self._train_set = self._test_set = self._perm = None
        self.progress = None

    # ------------------------------------------------------------------------------ identities
    def tag(self, which: int, objective: str) -> str:
        return f"resnet{self.preset.depths[which]}-{objective}"

    def train_config(self, which: int, objective: str):
        config = preset_config(self.dataset, objective, self.preset.train_preset, depth=self.preset.depths[which],
                               steps=self.preset.train_steps[which], seed=self.seed)
        batch = self.preset.train_batch_size[which]
        return config if batch is None else replace(config, batch_size=batch)

    def model_identity(self, which: int, objective: str) -> dict:
        return self.train_config(which, objective).to_json_dict()

    def kd_params(self, objective: str) -> dict:
        return {"bandwidth_sq": default_bandwidth_sq(objective), "n_per_class": self.preset.kd_per_class,
                "seed": self.seed}

    def base_config(self, which: int, objective: str) -> dict:
        """What every evaluation cell of one model depends on."""
        return {"dataset": self.dataset, "model": self.model_identity(which, objective),
                "kd": self.kd_params(objective), "seed": self.seed,
                "permutation_stream": PERMUTATION_STREAM, "calibration_n": self.preset.calibration_n,
                "fpr": self.preset.fpr}

    # ------------------------------------------------------------------------------- resources
    @property
    def train_set(self):
        if self._train_set is None:
            self._train_set = load_dataset(self.dataset, "train", self.data_dir)
        return self._train_set

    @property
    def test_set(self):
        if self._test_set is None:
            self._test_set = load_dataset(self.dataset, "test", self.data_dir)
        return self._test_set

    @property
    def permutation(self) -> torch.Tensor:
        if self._perm is None:
            generator = torch.Generator().manual_seed(self.seed * PERMUTATION_STREAM + 1)
            self._perm = torch.randperm(len(self.test_set), generator=generator)
        return self._perm

    def eval_index(self, n: int) -> torch.Tensor:
        """The first `n` images of the permutation: the attacked images (never the calibration ones)."""
        limit = len(self.test_set) - self.preset.calibration_n
        if n > limit:
            raise InputError(f"{n} attacked images requested but only {limit} test images are not held out "
                             f"for calibration: lower the preset's n or calibration_n")
        return self.permutation[:n]

    def images(self, n: int):
        """(x float (n, C, H, W) in [0, 1], y (n,)) of the first `n` attacked test images, on the CPU."""
        index = self.eval_index(n)
        return self.test_set.float_images(index), self.test_set.labels[index]

    def max_eval_n(self) -> int:
        p = self.preset
        return max([*p.n_attack.values(), p.fig3_n, p.fig3_jsma_n, p.tsne_n, p.cw_fixed_n, p.cwwb_n, p.adaptive_n])

    def checkpoint_dir(self, which: int, objective: str) -> Path:
        return self.run_dir / "models" / self.tag(which, objective)

    def ensure_trained(self, which: int, objective: str) -> Path:
        """Train (or resume, or reuse) the model; refuse a folder trained with other settings."""
        from ..training import train

        config = self.train_config(which, objective)
        directory = self.checkpoint_dir(which, objective)
        sidecar = directory / SIDECAR_FILE
        if sidecar.exists() and (directory / WEIGHTS_FILE).exists():
            saved = json.loads(sidecar.read_text()).get("config")
            if normalise(saved) != config.to_json_dict():
                raise InputError(f"{directory} holds a model trained with other settings: use another --out "
                                 f"for this preset, or delete that folder to re-train")
            return directory
        return train(config, directory, device=self.device, resume=True, progress=self.progress_enabled,
                     data_dir=self.data_dir)

    def on_device(self, x: torch.Tensor) -> torch.Tensor:
        """Images on the run's device in the models' channels_last layout."""
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    def model(self, which: int, objective: str):
        key = (which, objective)
        if key not in self._models:
            directory = self.ensure_trained(which, objective)
            # channels_last: the layout training used, ~20 % faster convolutions on CPU.
            self._models[key] = load_checkpoint(directory, device=self.device).model.to(
                memory_format=torch.channels_last)
        return self._models[key]

    def kd(self, which: int, objective: str) -> KernelDensity:
        """The fitted K-density detector of a model (bank features cached in RUN/cache)."""
        key = (which, objective)
        if key not in self._kds:
            params = self.kd_params(objective)
            kd = KernelDensity(params["bandwidth_sq"], n_per_class=params["n_per_class"], seed=params["seed"])
            labels = self.train_set.labels
            index = kd.subset_indices(labels, DATASETS[self.dataset].num_classes)
            config = {"model": self.model_identity(which, objective), "kd": params}

            def compute():
                model = self.model(which, objective)
                features = batched_outputs(model, self.train_set.images[index], device=self.device).features
                return {"features": features, "labels": labels[index]}

            bank = self.store.cached(f"{self.tag(which, objective)}.kd-bank", config, compute)
            # The bank already holds n_per_class points of each class: fit keeps all of them.
            kd.fit(bank["features"], bank["labels"], num_classes=DATASETS[self.dataset].num_classes)
            self._kds[key] = kd
        return self._kds[key]

    def _outputs_cached(self, which, objective, name, index) -> ModelOutput:
        config = {"model": self.model_identity(which, objective), "n": int(index.numel()),
                  "index_sha1": hashlib.sha1(index.numpy().astype(np.int64).tobytes()).hexdigest()}

        def compute():
            out = batched_outputs(self.model(which, objective), self.test_set.images[index], device=self.device)
            return {"logits": out.logits, "features": out.features}

        t = self.store.cached(f"{self.tag(which, objective)}.{name}", config, compute)
        return ModelOutput(t["logits"], t["features"])

    def clean_outputs(self, which: int, objective: str, n: int) -> ModelOutput:
        """Clean outputs of the first `n` attacked images (a prefix of one cached evaluation)."""
        key = (which, objective)
        if key not in self._clean:
            self._clean[key] = self._outputs_cached(which, objective, "clean", self.eval_index(self.max_eval_n()))
        out = self._clean[key]
        return ModelOutput(out.logits[:n], out.features[:n])

    def calibration_outputs(self, which: int, objective: str) -> ModelOutput:
        """Outputs of the held-out clean images that set thresholds at the preset's FPR."""
        key = (which, objective)
        if key not in self._cal:
            index = self.permutation[len(self.test_set) - self.preset.calibration_n:]
            self._cal[key] = self._outputs_cached(which, objective, "calibration", index)
        return self._cal[key]

    def metrics(self, which: int, objective: str) -> dict:
        """name -> score function of a ModelOutput (higher = more normal), as `METRICS` names them."""
        return {"confidence": ConfidenceMetric().score, "non-me": NonMEMetric().score,
                "kd": self.kd(which, objective).score}

    def thresholds(self, which: int, objective: str) -> dict:
        cal = self.calibration_outputs(which, objective)
        with torch.no_grad():
            return {m: threshold_at_fpr(f(cal), self.preset.fpr) for m, f in self.metrics(which, objective).items()}

    # --------------------------------------------------------------------------------- attacks
    def attack(self, which: int, objective: str, attack: str, n: int, *, eps=None, settings=None, label=None,
               lo: float = 0.0, hi: float = 1.0):
        """Adversarial examples of the first `n` images (cached, chunked, resumable).

        Returns (tensors {"x_adv", "success"}, attack seconds summed over chunks).
        """
        spec = ATTACKS[attack]
        settings = dict(settings or {})
        config = {"model": self.model_identity(which, objective), "attack": attack, "n": n, "eps": eps,
                  "settings": settings, "seed": self.seed, "permutation_stream": PERMUTATION_STREAM}
        model = self.model(which, objective)
        x, y = self.images(n)
        state = {}

        def chunk(start, stop):
            if "targets" not in state:
                # Targets for all n at once (seeded), so a chunk's targets never depend on the chunking.
                state["targets"] = (spec.targets(model, x.to(self.device), y.to(self.device), seed=self.seed)
                                    if spec.target_rule is not None and attack != "ilcm" else None)
            targets = state["targets"]
            result = spec(model, self.on_device(x[start:stop]), y[start:stop].to(self.device), eps=eps,
                          target=None if targets is None else targets[start:stop], seed=self.seed, **settings)
            return {"x_adv": result.x_adv, "success": result.success}

        callback = self.progress.chunk_callback(label or attack, lo, hi) if self.progress else None
        key = f"{self.tag(which, objective)}.{label or attack}".replace(" ", "_")
        return self.store.chunked(key, config, n, self.preset.chunk, chunk, on_chunk=callback)

    # ------------------------------------------------------------------------------- the cells
    def _train_cell(self, which: int, objective: str) -> dict:
        directory = self.ensure_trained(which, objective)
        meta = json.loads((directory / SIDECAR_FILE).read_text())
        metrics, config = meta.get("metrics", {}), meta["config"]
        return {"depth": config["depth"], "objective": objective, "steps": config["steps"],
                "test_error": metrics.get("test_error"), "test_accuracy": metrics.get("test_accuracy"),
                "train_seconds": metrics.get("train_seconds"), "train_device": metrics.get("device"),
                "checkpoint": str(directory.relative_to(self.run_dir))}

    def _detector_cell(self, which: int, objective: str) -> dict:
        kd = self.kd(which, objective)
        n = self.max_eval_n()
        clean = self.clean_outputs(which, objective, n)
        cal = self.calibration_outputs(which, objective)
        x_labels = self.test_set.labels[self.eval_index(n)]
        with torch.no_grad():
            scores = {m: f(cal) for m, f in self.metrics(which, objective).items()}
        return {"depth": self.preset.depths[which], "objective": objective,
                "bandwidth_sq": kd.bandwidth_sq, "bank_size": int(kd.bank_.shape[0]),
                "calibration_n": int(cal.logits.shape[0]), "fpr": self.preset.fpr,
                "thresholds": {m: threshold_at_fpr(s, self.preset.fpr) for m, s in scores.items()},
                "calibration_score_mean": {m: float(s.double().mean()) for m, s in scores.items()},
                "calibration_accuracy": float((cal.logits.argmax(1) == self.test_set.labels[
                    self.permutation[len(self.test_set) - self.preset.calibration_n:]]).float().mean()),
                "eval_n": n, "eval_accuracy": float((clean.logits.argmax(1) == x_labels).float().mean())}

    def detection_result(self, which: int, objective: str, x, y, x_adv, *, per_example: bool = True) -> dict:
        """Accuracy, the counting filter, distortion, AUC / detection rate / robust accuracy per metric."""
        n = x.shape[0]
        model = self.model(which, objective)
        clean = self.clean_outputs(which, objective, n)
        adv = batched_outputs(model, x_adv, device=self.device)
        clean_pred, adv_pred = clean.logits.argmax(1), adv.logits.argmax(1)
        mask = counting_mask(y, clean_pred, adv_pred)
        dist = distortion(x_adv, x)
        thresholds = self.thresholds(which, objective)
        out = {"n": n, "clean_accuracy": float((clean_pred == y).float().mean()),
               "adversarial_accuracy": float((adv_pred == y).float().mean()),
               "n_counted": int(mask.sum()), "distortion": _mean_or_none(dist[mask]),
               "distortion_all": float(dist.mean()), "fpr": self.preset.fpr,
               "auc": {}, "detection_rate": {}, "robust_accuracy_with_rejection": {}, "thresholds": thresholds}
        clean_scores, adv_scores = {}, {}
        with torch.no_grad():
            for m, f in self.metrics(which, objective).items():
                cs, ads = f(clean).double().numpy(), f(adv).double().numpy()
                clean_scores[m], adv_scores[m] = cs, ads
                counted = mask.any()
                out["auc"][m] = auc_score(cs[mask], ads[mask]) if counted else None
                out["detection_rate"][m] = float(np.mean(ads[mask] <= thresholds[m])) if counted else None
                out["robust_accuracy_with_rejection"][m] = robust_accuracy_with_rejection(
                    y, adv_pred, ads, thresholds[m])
        if per_example:
            out["per_example"] = {
                "label": _ints(y), "clean_pred": _ints(clean_pred), "adv_pred": _ints(adv_pred),
                "distortion": _sig(dist),
                "clean_scores": {m: _sig(v) for m, v in clean_scores.items()},
                "adv_scores": {m: _sig(v) for m, v in adv_scores.items()},
            }
        return out

    def _table2_args(self, attack: str):
        eps = self.preset.eps.get(attack)
        settings = dict(self.preset.attack_settings.get(attack, {}))
        if attack == "jsma":
            settings["theta"] = eps  # JSMA's eps is its per-feature offset (section 2.3)
            eps = None
        return eps, settings

    def _table2_config(self, attack: str, objective: str) -> dict:
        eps, settings = self._table2_args(attack)
        return {**self.base_config(0, objective), "attack": attack, "n": self.preset.n_attack[attack],
                "eps": eps, "settings": settings}

    def _table2_cell(self, attack: str, objective: str) -> dict:
        eps, settings = self._table2_args(attack)
        n = self.preset.n_attack[attack]
        tensors, seconds = self.attack(0, objective, attack, n, eps=eps, settings=settings, hi=0.95)
        x, y = self.images(n)
        out = self.detection_result(0, objective, x, y, tensors["x_adv"])
        return {"attack": attack, "objective": objective, "depth": self.preset.depths[0],
                "eps": self.preset.eps.get(attack), "settings": settings,
                "attack_success_rate": float(tensors["success"].float().mean()),
                "attack_seconds": seconds, "seconds_per_example": seconds / n, **out}

    def _fig3_args(self, attack: str, eps: float):
        settings = dict(self.preset.attack_settings.get(attack, {}))
        if attack == "jsma":
            settings["theta"] = eps
            return None, settings, self.preset.fig3_jsma_n
        return eps, settings, self.preset.fig3_n

    def _fig3_config(self, attack: str, objective: str) -> dict:
        runs = [self._fig3_args(attack, e) for e in self.preset.fig3_eps]
        return {**self.base_config(0, objective), "attack": attack, "grid": list(self.preset.fig3_eps),
                "runs": [{"eps": e, "settings": s, "n": n} for e, s, n in runs]}

    def _fig3_cell(self, attack: str, objective: str) -> dict:
        accuracy, seconds, success = [], [], []
        grid = self.preset.fig3_eps
        for i, value in enumerate(grid):
            eps, settings, n = self._fig3_args(attack, value)
            tensors, took = self.attack(0, objective, attack, n, eps=eps, settings=settings,
                                        label=f"fig3-{attack}-{value:g}", lo=i / len(grid), hi=(i + 1) / len(grid))
            x, y = self.images(n)
            pred = batched_outputs(self.model(0, objective), tensors["x_adv"], device=self.device).logits.argmax(1)
            accuracy.append(float((pred == y).float().mean()))
            success.append(float(tensors["success"].float().mean()))
            seconds.append(took)
        n = self._fig3_args(attack, grid[0])[2]
        clean = self.clean_outputs(0, objective, n).logits.argmax(1)
        return {"attack": attack, "objective": objective, "x_axis": "theta" if attack == "jsma" else "eps",
                "eps": list(grid), "n": n, "accuracy": accuracy, "attack_success_rate": success,
                "clean_accuracy": float((clean == self.images(n)[1]).float().mean()), "attack_seconds": seconds}

    def _rand_config(self, objective: str) -> dict:
        p = self.preset
        return {**self.base_config(0, objective), "eps": list(p.rand_eps), "n": p.rand_n,
                "hist_eps": p.hist_rand_eps, "hist_n": min(p.rand_n, 1000)}

    def _rand_cell(self, objective: str) -> dict:
        p = self.preset
        model = self.model(0, objective)
        index = self.permutation[:p.rand_n]  # RAND sets no threshold: the whole test set may be used
        x, y = self.test_set.float_images(index), self.test_set.labels[index]
        errors = []
        for i, eps in enumerate(p.rand_eps):
            noisy = random_noise(x, eps=eps, seed=self.seed).x_adv
            pred = batched_outputs(model, noisy, device=self.device).logits.argmax(1)
            errors.append(float((pred != y).float().mean()))
            if self.progress:
                self.progress.fraction((i + 1) / (len(p.rand_eps) + 1))
        hist_n = min(p.rand_n, 1000)
        kd = self.kd(0, objective)
        clean_out = batched_outputs(model, x[:hist_n], device=self.device)
        noisy_out = batched_outputs(model, random_noise(x[:hist_n], eps=p.hist_rand_eps, seed=self.seed).x_adv,
                                    device=self.device)
        with torch.no_grad():
            kd_clean, kd_noisy = kd.score(clean_out), kd.score(noisy_out)
        return {"objective": objective, "eps": list(p.rand_eps), "n": p.rand_n, "error": errors,
                "hist": {"eps": p.hist_rand_eps, "n": hist_n, "kd_clean": _sig(kd_clean),
                         "kd_noisy": _sig(kd_noisy),
                         "noisy_error": float((noisy_out.logits.argmax(1) != y[:hist_n]).float().mean())}}

    def _tsne_config(self, objective: str) -> dict:
        return {**self.base_config(0, objective), "n": self.preset.tsne_n,
                "perplexity": self.preset.tsne_perplexity, "method": "sklearn.manifold.TSNE init=pca"}

    def _tsne_cell(self, objective: str) -> dict:
        from sklearn.manifold import TSNE

        n = self.preset.tsne_n
        features = self.clean_outputs(0, objective, n).features.double().numpy()
        embedding = TSNE(n_components=2, perplexity=self.preset.tsne_perplexity, init="pca", learning_rate="auto",
                         random_state=self.seed).fit_transform(features)
        return {"objective": objective, "n": n, "perplexity": self.preset.tsne_perplexity,
                "labels": _ints(self.images(n)[1]),
                "x": _sig(embedding[:, 0], 5), "y": _sig(embedding[:, 1], 5)}

    def _cwc_config(self, objective: str) -> dict:
        p = self.preset
        return {**self.base_config(0, objective), "c": list(p.cw_fixed_c), "n": p.cw_fixed_n,
                "settings": dict(p.cw_fixed_settings)}

    def _cwc_cell(self, objective: str) -> dict:
        p = self.preset
        n = p.cw_fixed_n
        x, y = self.images(n)
        accuracy, success, seconds = [], [], []
        for i, c in enumerate(p.cw_fixed_c):
            settings = {**p.cw_fixed_settings, "binary_search_steps": 1, "initial_const": c}
            tensors, took = self.attack(0, objective, "cw", n, settings=settings, label=f"cwc-{c:g}",
                                        lo=i / len(p.cw_fixed_c), hi=(i + 1) / len(p.cw_fixed_c))
            pred = batched_outputs(self.model(0, objective), tensors["x_adv"], device=self.device).logits.argmax(1)
            accuracy.append(float((pred == y).float().mean()))
            success.append(float(tensors["success"].float().mean()))
            seconds.append(took)
        return {"objective": objective, "c": list(p.cw_fixed_c), "n": n, "accuracy": accuracy,
                "attack_success_rate": success, "attack_seconds": seconds,
                "clean_accuracy": float((self.clean_outputs(0, objective, n).logits.argmax(1) == y).float().mean())}

    # ------------------------------------------------------------------------------ the plan
    def cells(self) -> list:
        """The cells of this run, in order, with their configs and estimated costs."""
        p, ds = self.preset, self.dataset
        small, large = p.depths
        cells = []

        def fwd(depth, n):
            return n * unit_cost("fwd", ds, depth)

        def grad(depth, n):
            return n * unit_cost("grad", ds, depth)

        def add(name, config, fn, cost):
            cells.append(Cell(name, config, fn, cost))

        def train_cells(which):
            depth = p.depths[which]
            for obj in OBJECTIVES:
                tc = self.train_config(which, obj)
                add(f"train.{self.tag(which, obj)}", {"dataset": ds, "model": self.model_identity(which, obj)},
                    lambda w=which, o=obj: self._train_cell(w, o),
                    tc.steps * unit_cost("train_step", ds, depth) * tc.batch_size / 128 + 2)
            for obj in OBJECTIVES:
                n_bank = p.kd_per_class * DATASETS[ds].num_classes
                add(f"detector.{self.tag(which, obj)}",
                    {**self.base_config(which, obj), "eval_n": self.max_eval_n()},
                    lambda w=which, o=obj: self._detector_cell(w, o),
                    fwd(depth, n_bank + self.max_eval_n() + p.calibration_n) + 1)

        train_cells(0)
        for attack in TABLE2_ATTACKS:
            n = p.n_attack[attack]
            settings = p.attack_settings.get(attack, {})
            cost = {
                "fgsm": grad(small, n),
                "bim": grad(small, n * 10),
                "ilcm": grad(small, n * 10),
                "jsma": grad(small, n * settings.get("max_iters", 50) * 0.8) * 1.5,
                "cw": grad(small, n * settings.get("binary_search_steps", 9) * settings.get("max_iters", 1000)
                           * EARLY_ABORT) * 1.5,
            }.get(attack if attack != "cw-hc" else "cw") + fwd(small, 2 * n) + 1
            for obj in OBJECTIVES:
                add(f"table2.{attack}.{obj}", self._table2_config(attack, obj),
                    lambda a=attack, o=obj: self._table2_cell(a, o), cost)
        for obj in OBJECTIVES:
            add(f"tsne.{obj}", self._tsne_config(obj), lambda o=obj: self._tsne_cell(o), 2 + p.tsne_n * 0.008)
        for obj in OBJECTIVES:
            add(f"rand.{obj}", self._rand_config(obj), lambda o=obj: self._rand_cell(o),
                fwd(small, p.rand_n * len(p.rand_eps) + 2000) + 1)
        for attack in FIG3_ATTACKS:
            per_eps = {"fgsm": p.fig3_n, "bim": p.fig3_n * 10, "ilcm": p.fig3_n * 10,
                       "jsma": p.fig3_jsma_n * p.attack_settings.get("jsma", {}).get("max_iters", 50) * 1.2}[attack]
            cost = grad(small, per_eps * len(p.fig3_eps)) + fwd(small, p.fig3_n * len(p.fig3_eps)) + 1
            for obj in OBJECTIVES:
                add(f"fig3.{attack}.{obj}", self._fig3_config(attack, obj),
                    lambda a=attack, o=obj: self._fig3_cell(a, o), cost)
        cwwb = p.cwwb_settings
        cwwb_cost = grad(small, p.cwwb_n * 2 * cwwb.get("binary_search_steps", 9) * cwwb.get("max_iters", 1000)
                         * EARLY_ABORT) * 1.5 + 2
        for kappa in p.cwwb_kappas:
            for obj in OBJECTIVES:
                add(f"table3.k{kappa:g}.{obj}", threat_cells.table3_config(self, kappa, obj),
                    lambda k=kappa, o=obj: threat_cells.table3_cell(self, k, o), cwwb_cost)
        train_cells(1)
        for sub in OBJECTIVES:
            for target in OBJECTIVES:
                add(f"table4.{sub}-to-{target}", threat_cells.table4_config(self, sub, target),
                    lambda s=sub, t=target: threat_cells.table4_cell(self, s, t), fwd(large, 2 * p.cwwb_n) + 1)
        for obj in OBJECTIVES:
            add(f"cwc.{obj}", self._cwc_config(obj), lambda o=obj: self._cwc_cell(o),
                grad(small, p.cw_fixed_n * len(p.cw_fixed_c) * p.cw_fixed_settings.get("max_iters", 1000)
                     * EARLY_ABORT) * 1.5 + 1)
        adaptive = p.adaptive_settings
        method_cost = sum({"logit": 1.0}.get(m, 1.6) for m in adaptive.get("methods", ("logit",)))
        adaptive_cost = grad(small, p.adaptive_n * sum(1 for e in p.adaptive_eps if e > 0) * adaptive.get("steps", 100)
                             * adaptive.get("restarts", 1) * (len(p.adaptive_metrics) * method_cost + 1)) + 1
        for obj in OBJECTIVES:
            add(f"adaptive.{obj}", threat_cells.adaptive_config(self, obj),
                lambda o=obj: threat_cells.adaptive_cell(self, o), adaptive_cost)
        return cells

    def estimate_seconds(self) -> float:
        """The plan's estimated seconds on a quiet 2-core CPU (the cost model of `presets`)."""
        return sum(c.cost for c in self.cells())

    def _write_run_info(self) -> None:
        path = self.run_dir / "run.json"
        if path.exists():
            try:
                info = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                info = {}
            if info.get("dataset", self.dataset) != self.dataset or info.get("preset", self.preset.name) != self.preset.name:
                raise InputError(f"{self.run_dir} is a {info.get('dataset')} / {info.get('preset')} run: "
                                 f"use another --out for --dataset {self.dataset} --preset {self.preset.name}")
        atomic_write_json(path, {"format": RUN_FORMAT, "dataset": self.dataset, "preset": self.preset.name,
                                 "settings": normalise(self.preset.to_dict()), "rcedetect_version": __version__,
                                 "estimated_quiet_cpu_seconds": self.estimate_seconds()})

    def run(self, only=None) -> dict:
        """Compute every cell not already stored (or only those whose name starts with one of `only`).

        Returns {cell name: result}. A cell that raises stops the run; cells finished before it stay
        stored, and the next run continues from it.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_run_info()
        plan = self.cells()
        if only:
            plan = [c for c in plan if any(c.name.startswith(prefix) for prefix in only)]
        done = [self.store.is_done(c.name, c.config) for c in plan]
        self.progress = _Progress(plan, done, self.progress_enabled)
        results = {}
        started = time.perf_counter()
        try:
            for i, cell in enumerate(plan):
                self.progress.start(i, cell)
                results[cell.name] = self.store.compute(cell.name, cell.config, cell.fn, seed=self.seed)
                self.progress.finish()
        finally:
            self.progress.close()
            self.progress = None
        self.wall_seconds = time.perf_counter() - started
        return results
