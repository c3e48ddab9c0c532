"""Fit or load the thresholding detectors saved beside a checkpoint, with their calibration split.

    from rcedetect.detectors.session import DetectorSession, DetectorSettings, fit_or_load_detector

    detector, info = fit_or_load_detector(checkpoint, Metric.KD, DetectorSettings(fpr=0.05), device="cpu")
    session = DetectorSession(checkpoint, DetectorSettings(), device=device)   # several metrics, shared outputs
    kd, info = session.detector("kd")

`checkpoint` is a `LoadedCheckpoint` (`rcedetect.checkpoints.load_checkpoint`). The detector of a metric
is saved beside it (detector-<metric>.json + .safetensors, `rcedetect.detectors.persistence`):
  * K-density bank: a seeded subset of `n_per_class` training images per true class;
  * threshold: rejects `fpr` of `calibration_size` clean test images, the first ones of a permutation
    seeded by `split_seed` (`test_order`); the next ones are held out (`heldout_index`).
A saved detector is reused when the checkpoint's weights (sha256) and the fit settings match; another
`fpr` only moves the threshold (the clean calibration scores are stored); `refit` forces a new fit.

The supervised baselines (LID, Mahalanobis-LR) are fitted on adversarial + noisy examples of one
attack crafted on training images (`supervised`, the honest protocol: FGSM at Table 2's eps by
default). Crafting them is never a side effect: without `fit_adversarial` (or `refit`) a missing or
mismatching saved detector is a `CheckpointError` naming the fix. Their inputs are layer
activations, not `ModelOutput`s: score images with `score_images`.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError, InputError, OutputError
from ..files import sha256_file
from ..locks import FolderLock
from ..names import BASELINE_METRICS, SUPERVISED_METRICS, Metric


@dataclass(frozen=True)
class DetectorSettings:
    """How the detectors beside a checkpoint are fitted and calibrated (`rcedetect detect`'s options).

    fpr: fraction of clean calibration inputs rejected (sets the threshold), in [0, 1).
    n_per_class: K-density bank, training images per class. bandwidth_sq: K-density σ² (None: the
    objective's default). calibration_size: clean test images (first of the seeded permutation) that
    set the threshold. split_seed: seed of that permutation. refit: refit even when a saved detector
    matches. data_dir: dataset folder (None: the default). batch_size: images per forward pass.
    Supervised baselines (LID, Mahalanobis-LR; `supervised.FitProtocol`): fit_adversarial allows crafting
    their fitting examples when no matching saved detector exists; fit_attack, fit_eps (None: Table 2's
    FGSM eps of the dataset), fit_n (training images attacked), gaussian_n (training images of
    Mahalanobis-LR's Gaussians), magnitude (Mahalanobis input preprocessing, 0: none). The unsupervised
    Mahalanobis metric is fitted on the K-density bank's images (`n_per_class` per class, seed 0).
    """

    fpr: float = 0.05
    n_per_class: int = 1000
    bandwidth_sq: Optional[float] = None
    calibration_size: int = 5000
    split_seed: int = 0
    refit: bool = False
    data_dir: Optional[str] = None
    batch_size: int = 500
    fit_adversarial: bool = False
    fit_attack: str = "fgsm"
    fit_eps: Optional[float] = None
    fit_n: int = 1000
    gaussian_n: int = 5000
    magnitude: float = 0.0

    def __post_init__(self):
        if not 0 <= self.fpr < 1:
            raise InputError(f"fpr (--fpr) must be in [0, 1), got {self.fpr}")
        if self.n_per_class < 1:
            raise InputError(f"n_per_class (--n-per-class) must be positive, got {self.n_per_class}")
        if self.calibration_size < 1:
            raise InputError(f"calibration_size (--calibration-size) must be >= 1, got {self.calibration_size}")
        if self.batch_size < 1:
            raise InputError(f"batch_size (--batch-size) must be >= 1, got {self.batch_size}")
        if self.bandwidth_sq is not None and not self.bandwidth_sq > 0:
            raise InputError(f"bandwidth_sq (--bandwidth-sq) must be positive, got {self.bandwidth_sq}")
        self.protocol("mnist")  # validates the fitting settings now (any dataset: eps aside they agree)

    def protocol(self, dataset):
        """The `FitProtocol` of the supervised baselines for a checkpoint of `dataset`."""
        from ..names import Dataset
        from .supervised import DEFAULT_FIT_EPS, FitProtocol

        eps = DEFAULT_FIT_EPS[Dataset.coerce(dataset)] if self.fit_eps is None else self.fit_eps
        return FitProtocol(eps=eps, attack=self.fit_attack, n=self.fit_n, n_gaussian=self.gaussian_n,
                           magnitude=self.magnitude, seed=self.split_seed)


@dataclass(frozen=True)
class FitInfo:
    """How `DetectorSession.detector` obtained a detector.

    action: "loaded" (saved one reused), "recalibrated" (reused, threshold moved to another fpr) or
    "fitted"; notes: human-readable remarks (why it refitted, why it could not save); seconds: fit time.
    """

    action: str
    notes: tuple = ()
    seconds: float = 0.0


class DetectorSession:
    """A checkpoint, its data and cached model outputs, shared by the detectors of several metrics."""

    def __init__(self, checkpoint, settings: DetectorSettings = DetectorSettings(), *, device="cpu"):
        from ..checkpoints import WEIGHTS_FILE

        if not isinstance(settings, DetectorSettings):
            raise InputError(f"settings must be a DetectorSettings, got {type(settings).__name__}")
        self.checkpoint, self.settings, self.device = checkpoint, settings, torch.device(device)
        self.config = checkpoint.config
        self._weights_path = Path(checkpoint.directory) / WEIGHTS_FILE
        self._weights_sha256 = None
        self._outputs = {}

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:
            self._weights_sha256 = sha256_file(self._weights_path)
        return self._weights_sha256

    def dataset(self, split: str):
        from ..data import load_dataset

        return load_dataset(self.config.dataset, split, self.settings.data_dir)

    def outputs(self, split: str, index, key):
        """ModelOutput of the checkpoint's model on `split` images `index`, cached under `key`."""
        from .selective import collect_outputs

        if key not in self._outputs:
            images = self.dataset(split).images[index]
            self._outputs[key] = collect_outputs(self.checkpoint.model, images, batch_size=self.settings.batch_size,
                                                 device=self.device)
        return self._outputs[key]

    def test_order(self) -> torch.Tensor:
        """A seeded permutation of the test set. Its first `calibration_size` images set thresholds and
        the next ones are held out: random halves are exchangeable, MNIST's own halves are not (its
        first 5 000 test digits are cleaner than the last 5 000)."""
        n_test = len(self.dataset("test"))
        return torch.randperm(n_test, generator=torch.Generator().manual_seed(self.settings.split_seed))

    def calibration_range(self):
        """(start, stop) positions in `test_order()` of the calibration images."""
        n_test = len(self.dataset("test"))
        size = self.settings.calibration_size
        if not 0 < size < n_test:
            raise InputError(f"--calibration-size must be between 1 and {n_test - 1}, got {size}")
        return 0, size

    def test_outputs(self, start: int, stop: int):
        """ModelOutput on the test images at positions [start, stop) of `test_order()`."""
        return self.outputs("test", self.test_order()[start:stop], ("test", self.settings.split_seed, start, stop))

    def calibration_outputs(self):
        return self.test_outputs(*self.calibration_range())

    def heldout_index(self, n: int, start: Optional[int] = None):
        """Test-set indices at positions [start, start + n) of `test_order()` (default start:
        `calibration_size`, i.e. images held out from the thresholds). Returns (indices, note): the
        note (else None) says when they overlap the calibration images."""
        order = self.test_order()
        size = self.settings.calibration_size
        start = size if start is None else start
        if start < 0 or n < 1 or start + n > order.numel():
            raise InputError(f"test images [{start}, {start + n}) of the permutation are outside the "
                             f"{order.numel()} test images: lower --n or --start")
        note = (f"permuted test images [{start}, {start + n}) overlap the detectors' calibration images "
                f"[0, {size})" if start < size else None)
        return order[start:start + n], note

    def new_metric(self, metric):
        from . import METRICS

        metric = Metric.coerce(metric, "metric")
        options = {Metric.KD: {"n_per_class": self.settings.n_per_class, "bandwidth_sq": self.settings.bandwidth_sq},
                   Metric.MAHALANOBIS: {"n_per_class": self.settings.n_per_class},
                   Metric.MAHALANOBIS_LR: {"magnitude": self.settings.magnitude, "seed": self.settings.split_seed},
                   Metric.LID: {"seed": self.settings.split_seed}}.get(metric, {})
        return METRICS[metric](self.config.objective, **options)

    def fit_settings(self, metric) -> dict:
        """What a saved detector must have been fitted with to be reused (stored as its metadata)."""
        start, stop = self.calibration_range()
        settings = {"checkpoint_sha256": self.weights_sha256, "dataset": self.config.dataset,
                    "objective": self.config.objective, "metric_params": self.new_metric(metric).params(),
                    "calibration": {"split": "test", "permutation_seed": self.settings.split_seed, "start": start,
                                    "stop": stop}}
        if Metric.coerce(metric, "metric") in SUPERVISED_METRICS:
            settings["protocol"] = {**self.settings.protocol(self.config.dataset).to_dict(), "split": "train"}
        return settings

    def detector(self, metric):
        """The fitted `ThresholdDetector` of `metric`: the saved one when its fit settings match (its
        threshold moved to `fpr` if needed), else fitted and saved. Returns (detector, FitInfo)."""
        from .persistence import detector_paths, load_detector

        metric = Metric.coerce(metric, "metric")
        settings = self.fit_settings(metric)
        directory = self.checkpoint.directory
        notes = []
        if not self.settings.refit and any(p.exists() for p in detector_paths(directory, metric)):
            try:
                detector, metadata = load_detector(directory, metric)
            except CheckpointError as exc:
                detector, metadata = None, None
                notes.append(f"{exc}; refitting")
            if metadata is not None and {k: metadata.get(k) for k in settings} == settings \
                    and detector.calibration_scores_ is not None:
                if detector.fpr_ != self.settings.fpr:
                    detector.recalibrate(self.settings.fpr)
                    return detector, FitInfo("recalibrated", tuple(notes))
                return detector, FitInfo("loaded", tuple(notes))
            if metadata is not None:
                notes.append(f"the saved {metric} detector was fitted with other settings or weights; refitting")
        if metric in SUPERVISED_METRICS and not (self.settings.fit_adversarial or self.settings.refit):
            p = self.settings.protocol(self.config.dataset)
            why = ("its saved detector was fitted with other settings or weights" if notes else
                   f"none is saved in {directory}")
            raise CheckpointError(f"the '{metric}' detector is fitted on adversarial examples and {why}: add "
                                  f"--fit-adversarial to craft them ({p.attack} at eps {p.eps:g} on {p.n} training "
                                  f"images) and save the detector beside the checkpoint")
        # Fitting writes beside the checkpoint: one writer per checkpoint folder (a reader that found a
        # matching saved detector above never takes the lock). A folder we cannot write still gets a
        # detector (not saved, see below), so only another holder is an error.
        lock = FolderLock(directory, "fitting detectors")
        try:
            lock.acquire()
        except OutputError:
            lock = None
        try:
            return self._fit(metric, settings, notes)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, metric, settings: dict, notes: list):
        from .persistence import save_detector
        from .threshold import ThresholdDetector

        directory = self.checkpoint.directory
        t0 = time.perf_counter()
        new = self.new_metric(metric)
        detector = ThresholdDetector(new, fpr=self.settings.fpr)
        if metric in SUPERVISED_METRICS:
            fitted, fit_record = self._fit_supervised(metric)
            detector.metric_ = fitted
            calibration = self.test_images(*self.calibration_range())
            detector.calibrate(self._baseline_inputs(fitted, metric, calibration)[0])
            settings["fitting_examples"] = fit_record
        elif new.requires_fit:
            train = self.dataset("train")
            index = new.subset_indices(train.labels, self.checkpoint.model.num_classes)
            train_out = self.outputs("train", index, ("train-bank", str(metric), self.settings.n_per_class))
            detector.fit(train_out, train.labels[index], calibration=self.calibration_outputs())
        else:
            detector.fit(calibration=self.calibration_outputs())
        seconds = time.perf_counter() - t0
        settings["fit_seconds"] = seconds
        try:
            save_detector(detector, directory, metadata=settings)
        except (OSError, OutputError) as exc:  # a read-only checkpoint folder still gets its detector
            notes.append(f"warning: could not save the detector beside the checkpoint ({exc}); "
                         f"it will be refitted next time")
        return detector, FitInfo("fitted", tuple(notes), seconds)

    # ------------------------------------------------------------------------ supervised baselines
    def _fit_supervised(self, metric):
        from .supervised import fit_supervised, fitting_examples, fitting_indices

        protocol = self.settings.protocol(self.config.dataset)
        train = self.dataset("train")
        fit_index, gaussian_index = fitting_indices(len(train), protocol)
        model = self.checkpoint.model
        examples = fitting_examples(model, train.images[fit_index], train.labels[fit_index], protocol,
                                    batch_size=self.settings.batch_size, device=self.device)
        fitted = fit_supervised(model, examples, protocol, metrics=(metric,), gaussian_images=train.images[gaussian_index],
                                gaussian_labels=train.labels[gaussian_index], num_classes=model.num_classes,
                                batch_size=self.settings.batch_size, device=self.device)[metric]
        return fitted, {"attacked": examples.attacked, "counted": int(examples.labels.numel()),
                        "attack_success_rate": examples.attack_success_rate}

    def _baseline_inputs(self, metric_object, metric, images):
        from .supervised import baseline_inputs

        inputs, logits = baseline_inputs(self.checkpoint.model, {metric: metric_object}, images,
                                         batch_size=self.settings.batch_size, device=self.device)
        return inputs[metric], logits

    def test_images(self, start: int, stop: int) -> torch.Tensor:
        """The test images (uint8) at positions [start, stop) of `test_order()`."""
        return self.dataset("test").images[self.test_order()[start:stop]]

    def score_images(self, detector, metric, images):
        """(scores (N,) higher = more normal, logits (N, L)) of `images` (float in [0, 1] or uint8) under the
        fitted `detector` of `metric`: model outputs for the paper's metrics, layer activations for the
        baselines."""
        from .selective import collect_outputs

        metric = Metric.coerce(metric, "metric")
        if metric in BASELINE_METRICS and metric != Metric.MAHALANOBIS:
            inputs, logits = self._baseline_inputs(detector.metric_, metric, images)
        else:
            inputs = collect_outputs(self.checkpoint.model, images, batch_size=self.settings.batch_size,
                                     device=self.device)
            logits = inputs.logits
        with torch.no_grad():
            return detector.score_samples(inputs).detach().cpu(), logits.cpu()

    def test_scores(self, detector, metric, start: int, stop: int) -> torch.Tensor:
        """Scores of the test images at positions [start, stop) of `test_order()` (cached outputs for
        the paper's metrics)."""
        metric = Metric.coerce(metric, "metric")
        if metric in SUPERVISED_METRICS:
            return self.score_images(detector, metric, self.test_images(start, stop))[0]
        with torch.no_grad():
            return detector.score_samples(self.test_outputs(start, stop)).detach().cpu()


def fit_or_load_detector(checkpoint, metric, settings: DetectorSettings = DetectorSettings(), *, device="cpu"):
    """The fitted `ThresholdDetector` of `metric` beside `checkpoint` (a `LoadedCheckpoint`): loaded when a
    saved one matches `settings`, else fitted and saved. Returns (detector, FitInfo). Use a
    `DetectorSession` to fit several metrics of one checkpoint on shared model outputs."""
    return DetectorSession(checkpoint, settings, device=device).detector(metric)
