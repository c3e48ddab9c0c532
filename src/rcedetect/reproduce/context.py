"""The resources of one reproduction run, shared by its cells: data, the test-set permutation, the
trained models, their K-density detectors and the cached clean / calibration outputs.

Nothing here trains as a side effect: `train(which, objective)` is the explicit step (the `train`
cells call it); `model()` loads a trained checkpoint and refuses when there is none. Everything a
cell computes from these resources, and every attack, lives in the cell modules.
"""

import hashlib
import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import SIDECAR_FILE, WEIGHTS_FILE, load_checkpoint
from ..config import preset_config
from ..data import DATASETS, load_dataset
from ..detectors import (ConfidenceMetric, KernelDensity, MahalanobisMetric, NonMEMetric, default_bandwidth_sq,
                         threshold_at_fpr)
from ..errors import InputError
from ..files import sha256_file
from ..inference import batched_outputs
from ..models import ModelOutput
from ..names import Attack, Metric
from .store import CellStore, normalise
from .schema import model_tag

PERMUTATION_STREAM = 7_000_003  # the test-set permutation: its own stream of the preset seed


class RunContext:
    """Data, models and detectors of one run folder; loaded lazily, cached for the run's lifetime.

    `which` selects the depth: 0 the main (attacked) model, 1 the black-box target of Table 4.
    """

    def __init__(self, preset, run_dir, *, device, data_dir=None, store: CellStore = None,
                 train_progress: bool = False):
        self.preset = preset
        self.dataset = preset.dataset
        self.seed = preset.seed
        self.run_dir = Path(run_dir)
        self.device = device
        self.data_dir = data_dir
        self.store = store if store is not None else CellStore(self.run_dir, device=device)
        if self.store.weights_of is None:
            self.store.weights_of = self.weights_sha256
        self.train_progress = train_progress
        self.num_classes = DATASETS[self.dataset].num_classes
        self._models, self._kds, self._clean, self._cal, self._supervised = {}, {}, {}, {}, {}
        self._hashes = {}  # weights path -> ((inode, size, mtime_ns), sha256)

    # ------------------------------------------------------------------------------ integrity
    def weights_file_sha256(self, tag: str):
        """sha256 of RUN/models/<tag>/model.safetensors, or None while it does not exist (cached per
        inode, size and mtime: a retrained model is hashed again)."""
        path = self.run_dir / "models" / tag / WEIGHTS_FILE
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, sha256_file(path))
            self._hashes[path] = cached
        return cached[1]

    def weights_sha256(self, config) -> dict:
        """{model tag: sha256 of its weights} of every trained model a cell / cache config names (each
        `"model": <training config>` inside it); models not trained yet are left out."""
        tags = set()

        def walk(obj):
            if isinstance(obj, dict):
                model = obj.get("model")
                if isinstance(model, dict) and "depth" in model and "objective" in model:
                    tags.add(model_tag(model["depth"], model["objective"]))
                for value in obj.values():
                    walk(value)
            elif isinstance(obj, (list, tuple)):
                for value in obj:
                    walk(value)

        walk(config)
        return {tag: sha for tag in sorted(tags) if (sha := self.weights_file_sha256(tag)) is not None}

    # ------------------------------------------------------------------------------ identities
    def tag(self, which: int, objective) -> str:
        return model_tag(self.preset.depths[which], objective)

    def train_config(self, which: int, objective):
        p = self.preset
        config = preset_config(self.dataset, objective, p.train_preset, depth=p.depths[which],
                               steps=p.train_steps[which], seed=self.seed, precision=p.train_precision)
        batch = p.train_batch_size[which]
        return config if batch is None else replace(config, batch_size=batch)

    def model_identity(self, which: int, objective) -> dict:
        return self.train_config(which, objective).to_json_dict()

    def kd_params(self, objective) -> dict:
        return {"bandwidth_sq": default_bandwidth_sq(objective), "n_per_class": self.preset.kd_per_class,
                "seed": self.seed}

    def base_config(self, which: int, objective) -> dict:
        """What every evaluation cell of one model depends on."""
        p = self.preset
        return {"dataset": self.dataset, "model": self.model_identity(which, objective),
                "kd": self.kd_params(objective), "seed": self.seed,
                "permutation_stream": PERMUTATION_STREAM, "calibration_n": p.calibration_n, "fpr": p.fpr}

    def max_eval_n(self) -> int:
        """The most attacked images any cell uses: the clean outputs are cached for this prefix."""
        p = self.preset
        return max([*p.n_attack.values(), p.fig3_n, p.fig3_jsma_n, p.tsne_n, p.cw_fixed_n, p.cwwb_n, p.worst_case_n])

    # ------------------------------------------------------------------------------------ data
    @cached_property
    def train_set(self):
        return load_dataset(self.dataset, "train", self.data_dir)

    @cached_property
    def test_set(self):
        return load_dataset(self.dataset, "test", self.data_dir)

    @cached_property
    def permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * PERMUTATION_STREAM + 1)
        return torch.randperm(len(self.test_set), generator=generator)

    @property
    def calibration_index(self) -> torch.Tensor:
        """The held-out tail of the permutation: never attacked, sets the thresholds at the FPR."""
        return self.permutation[len(self.test_set) - self.preset.calibration_n:]

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

    def on_device(self, x: torch.Tensor) -> torch.Tensor:
        """Images on the run's device in the models' channels_last layout."""
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    # ---------------------------------------------------------------------------------- models
    def checkpoint_dir(self, which: int, objective) -> Path:
        return self.run_dir / "models" / self.tag(which, objective)

    def trained(self, which: int, objective) -> bool:
        """Whether the checkpoint folder holds a finished model; raises if it was trained otherwise."""
        directory = self.checkpoint_dir(which, objective)
        sidecar = directory / SIDECAR_FILE
        if not (sidecar.exists() and (directory / WEIGHTS_FILE).exists()):
            return False
        saved = json.loads(sidecar.read_text()).get("config")
        if normalise(saved) != self.model_identity(which, objective):
            raise InputError(f"{directory} holds a model trained with other settings: use another --out "
                             f"for this preset, or delete that folder to re-train")
        return True

    def train(self, which: int, objective) -> Path:
        """Train (or resume an interrupted training of) the model unless it is already trained."""
        from ..training import train

        directory = self.checkpoint_dir(which, objective)
        if self.trained(which, objective):
            return directory
        return train(self.train_config(which, objective), directory, device=self.device, resume=True,
                     progress=self.train_progress, data_dir=self.data_dir)

    def model(self, which: int, objective):
        """The trained model (loaded once). Training is the `train` cells' job, never a side effect."""
        key = (which, objective)
        if key not in self._models:
            if not self.trained(which, objective):
                tag = self.tag(which, objective)
                raise InputError(f"{self.checkpoint_dir(which, objective)} holds no trained model: run its "
                                 f"train cell first (--only train.{tag}; delete cells/train.{tag}.json if it "
                                 f"is stored without its model)")
            # channels_last: the layout training used, ~20 % faster convolutions on CPU.
            self._models[key] = load_checkpoint(self.checkpoint_dir(which, objective), device=self.device).model.to(
                memory_format=torch.channels_last)
        return self._models[key]

    # ------------------------------------------------------------------------------- detectors
    def kd_bank(self, which: int, objective) -> dict:
        """{"features", "labels"} of the K-density bank's training images (cached in RUN/cache): per
        class a seeded `kd_per_class` subset; also the unsupervised Mahalanobis baseline's data."""
        params = self.kd_params(objective)
        kd = KernelDensity(params["bandwidth_sq"], n_per_class=params["n_per_class"], seed=params["seed"])
        labels = self.train_set.labels
        index = kd.subset_indices(labels, self.num_classes)
        config = {"model": self.model_identity(which, objective), "kd": params}

        def compute():
            model = self.model(which, objective)
            features = batched_outputs(model, self.train_set.images[index], device=self.device).features
            return {"features": features, "labels": labels[index]}

        return self.store.cached(f"{self.tag(which, objective)}.kd-bank", config, compute)

    def kd(self, which: int, objective) -> KernelDensity:
        """The fitted K-density detector of a model (bank features cached in RUN/cache)."""
        key = (which, objective)
        if key not in self._kds:
            params = self.kd_params(objective)
            kd = KernelDensity(params["bandwidth_sq"], n_per_class=params["n_per_class"], seed=params["seed"])
            bank = self.kd_bank(which, objective)
            # The bank already holds n_per_class points of each class: fit keeps all of them.
            kd.fit(bank["features"], bank["labels"], num_classes=self.num_classes)
            self._kds[key] = kd
        return self._kds[key]

    def mahalanobis(self, which: int, objective) -> MahalanobisMetric:
        """The unsupervised Mahalanobis baseline of a model, fitted on its K-density bank (clean training
        images only)."""
        bank = self.kd_bank(which, objective)
        return MahalanobisMetric(n_per_class=self.preset.kd_per_class, seed=self.seed).fit(
            bank["features"], bank["labels"], num_classes=self.num_classes)

    def fit_protocol(self):
        """The supervised baselines' fitting protocol: FGSM at Table 2's FGSM eps, the preset's
        `baseline_protocol` for the rest."""
        from ..detectors.supervised import FitProtocol

        p = self.preset
        return FitProtocol(eps=p.eps[Attack.FGSM], attack=Attack.FGSM, seed=p.seed, **p.baseline_protocol)

    def supervised(self, which: int, objective) -> tuple:
        """(fitted {Metric.LID, Metric.MAHALANOBIS_LR}, fitting examples, seconds) of a model, by the
        honest protocol of `detectors.supervised` on training images; fitted once per process (seeded,
        so every cell that needs them gets the same detectors)."""
        import time

        from ..detectors.supervised import fit_supervised, fitting_examples, fitting_indices

        key = (which, objective)
        if key not in self._supervised:
            model, protocol, train = self.model(which, objective), self.fit_protocol(), self.train_set
            t0 = time.perf_counter()
            fit_index, gaussian_index = fitting_indices(len(train), protocol)
            examples = fitting_examples(model, train.images[fit_index], train.labels[fit_index], protocol,
                                        device=self.device)
            fitted = fit_supervised(model, examples, protocol, gaussian_images=train.images[gaussian_index],
                                    gaussian_labels=train.labels[gaussian_index], num_classes=self.num_classes,
                                    device=self.device)
            self._supervised[key] = (fitted, examples, time.perf_counter() - t0)
        return self._supervised[key]

    def metrics(self, which: int, objective) -> dict:
        """Metric -> score function of a ModelOutput (higher = more normal)."""
        return {Metric.CONFIDENCE: ConfidenceMetric().score, Metric.NON_ME: NonMEMetric().score,
                Metric.KD: self.kd(which, objective).score}

    def thresholds(self, which: int, objective) -> dict:
        """Metric -> threshold at the preset's FPR on the calibration images."""
        cal = self.calibration_outputs(which, objective)
        with torch.no_grad():
            return {m: threshold_at_fpr(f(cal), self.preset.fpr) for m, f in self.metrics(which, objective).items()}

    # ----------------------------------------------------------------------------- clean outputs
    def _outputs_cached(self, which, objective, name, index) -> ModelOutput:
        config = {"model": self.model_identity(which, objective), "n": int(index.numel()),
                  "index_sha1": hashlib.sha1(index.numpy().astype(np.int64).tobytes()).hexdigest()}

        def compute():
            out = batched_outputs(self.model(which, objective), self.test_set.images[index], device=self.device)
            return {"logits": out.logits, "features": out.features}

        t = self.store.cached(f"{self.tag(which, objective)}.{name}", config, compute)
        return ModelOutput(t["logits"], t["features"])

    def clean_outputs(self, which: int, objective, n: int) -> ModelOutput:
        """Clean outputs of the first `n` attacked images (a prefix of one cached evaluation)."""
        key = (which, objective)
        if key not in self._clean:
            self._clean[key] = self._outputs_cached(which, objective, "clean", self.eval_index(self.max_eval_n()))
        out = self._clean[key]
        return ModelOutput(out.logits[:n], out.features[:n])

    def calibration_outputs(self, which: int, objective) -> ModelOutput:
        """Outputs of the held-out clean images that set thresholds at the preset's FPR."""
        key = (which, objective)
        if key not in self._cal:
            self._cal[key] = self._outputs_cached(which, objective, "calibration", self.calibration_index)
        return self._cal[key]
