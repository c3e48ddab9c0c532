"""`rcedetect detect`: the thresholding test strategy (Pang et al. 2018, section 3.4) on input files.

    rcedetect detect CHECKPOINT --metric kd --input digits.npy [--json]
    rcedetect detect CHECKPOINT --report [--metric non-me]      # clean score distributions + measured FPR

The detector is fitted on first use and saved beside the checkpoint (detector-<metric>.json +
.safetensors), so later calls only load it:
  * K-density bank: a seeded subset of `--n-per-class` training images per true class;
  * threshold: rejects `--fpr` of `--calibration-size` clean test images, the first ones of a
    permutation seeded by `--split-seed` (held out from training; `--report` measures the rejection
    rate on the next `--calibration-size` images of that permutation).
A saved detector is reused when the checkpoint's weights (sha256) and the fit settings match; a
different `--fpr` only moves the threshold (the clean calibration scores are stored), `--refit`
forces a new fit.

Baselines (beyond the paper): `--metric mahalanobis` (Lee et al. 2018, unsupervised, penultimate
features, fitted on the K-density bank's training images) fits like kd. `--metric lid` and
`--metric mahalanobis-lr` are supervised: `--fit-adversarial` crafts their fitting examples (FGSM at
Table 2's eps on `--fit-n` training images, never test images) and saves the fitted detector; without
it a missing detector is an error naming the fix.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..inputs import READERS, read_array
from ..names import PAPER_METRICS, Metric
from ..detectors.supervised import FIT_ATTACKS
from ._common import add_checkpoint_argument, add_data_dir_argument, add_device_argument, print_notes

REPORT_QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
RESPLITS = 100


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect", help="classify inputs or reject them as adversarial (NOT SURE)",
        description="Thresholding detector of Pang et al. 2018: print the label or NOT SURE for each input, "
                    "or (--report) the clean-data score distributions and the measured false-positive rate.")
    add_checkpoint_argument(parser)
    parser.add_argument("--metric", choices=Metric.choices(), default=None,
                        help="detection metric (default: kd; with --report the paper's three); baselines: lid, "
                             "mahalanobis-lr (supervised: need --fit-adversarial once), mahalanobis (unsupervised)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", help="a PNG image, or a batch as .npy / .pt / .safetensors, shaped (N, C, H, W), "
                                      "(C, H, W) or (H, W)")
    mode.add_argument("--report", action="store_true",
                      help="fit/load the detectors and report clean score quantiles and the rejection rate of "
                           "held-out clean test inputs")
    parser.add_argument("--json", dest="json_stdout", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--output", default=None,
                        help="with --report: where to write the JSON report (default: CHECKPOINT/detect-report.json)")
    parser.add_argument("--pixel-scale", type=float, default=None,
                        help="input values lie in [0, SCALE], e.g. 255 (default: 255 for integer data, 1 for floats)")
    parser.add_argument("--fpr", type=float, default=0.05,
                        help="target fraction of clean inputs rejected, sets the threshold (default: 0.05)")
    parser.add_argument("--refit", action="store_true", help="refit the detector even if a saved one matches")
    parser.add_argument("--n-per-class", type=int, default=1000,
                        help="K-density bank: training images per class (default: 1000)")
    parser.add_argument("--bandwidth-sq", type=float, default=None,
                        help="K-density σ² (default: 1/0.26 for CE, 0.1/0.26 for RCE checkpoints)")
    parser.add_argument("--calibration-size", type=int, default=5000,
                        help="clean test images (of a seeded permutation) that set the threshold (default: 5000; "
                             "--report evaluates on the next as many)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the test-set permutation whose first --calibration-size images set the "
                             "threshold (default: 0)")
    parser.add_argument("--fit-adversarial", action="store_true",
                        help="lid / mahalanobis-lr: craft the fitting examples on training images and fit when no "
                             "matching saved detector exists")
    parser.add_argument("--fit-attack", choices=[a.value for a in FIT_ATTACKS], default="fgsm",
                        help="attack of the supervised detectors' fitting examples (default: fgsm)")
    parser.add_argument("--fit-eps", type=float, default=None,
                        help="its L-inf eps in [0, 1] (default: Table 2's FGSM eps, 0.16 MNIST / 0.12 CIFAR-10)")
    parser.add_argument("--fit-n", type=int, default=1000,
                        help="training images attacked for the fitting examples (default: 1000)")
    parser.add_argument("--gaussian-n", type=int, default=5000,
                        help="mahalanobis-lr: further training images that estimate its class Gaussians (default: 5000)")
    parser.add_argument("--magnitude", type=float, default=0.0,
                        help="mahalanobis-lr: input-preprocessing step (Lee et al.; default 0 = none)")
    parser.add_argument("--batch-size", type=int, default=500)
    add_device_argument(parser)
    add_data_dir_argument(parser)
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------------------ input files
# The readers of untrusted files (never unpickled, size-limited) live in `rcedetect.inputs`.


def _to_nchw(array: np.ndarray, path, in_channels: int, size: int, dataset: str) -> np.ndarray:
    expected = f"(N, {in_channels}, {size}, {size})"
    shape = array.shape
    if array.ndim == 2 and in_channels == 1:
        array = array[None, None]
    elif array.ndim == 3 and shape[0] == in_channels and shape[1:] == (size, size):
        array = array[None]
    elif array.ndim == 3 and in_channels == 1 and shape[1:] == (size, size):
        array = array[:, None]  # a batch of grayscale images (N, H, W)
    elif array.ndim == 4 and shape[1] == in_channels:
        pass
    elif array.ndim in (3, 4) and shape[-1] == in_channels and shape[-3:-1] == (size, size):
        raise InputError(f"{path} looks channels-last {shape}: transpose it to {expected}")
    elif array.ndim in (3, 4) and shape[-3] != in_channels and shape[-2:] == (size, size):
        raise InputError(f"{path} has {shape[-3]} channels, the {dataset} model expects {in_channels}: "
                         f"{'convert to grayscale' if in_channels == 1 else 'convert to RGB'}")
    else:
        raise InputError(f"{path} has shape {shape}: expected {expected}, ({in_channels}, {size}, {size})"
                         f"{f' or ({size}, {size})' if in_channels == 1 else ''} for the {dataset} model")
    if array.shape[1] != in_channels:
        raise InputError(f"{path} has {array.shape[1]} channels, the {dataset} model expects {in_channels}")
    if array.shape[2:] != (size, size):
        raise InputError(f"{path} has images of {array.shape[2]}x{array.shape[3]} pixels, "
                         f"the {dataset} model expects {size}x{size}: resize them")
    if array.shape[0] == 0:
        raise InputError(f"{path} holds no images (shape {shape})")
    return array


def load_input(path, *, in_channels: int, image_size: int, dataset: str = "the", pixel_scale=None) -> torch.Tensor:
    """Read an input file as float32 (N, C, H, W) in [0, 1], with one-line `InputError`s for bad input.

    Integer data is taken as [0, 255] and floats as [0, 1] unless `pixel_scale` says [0, pixel_scale].
    """
    path = Path(path)
    array = read_array(path)
    if array.dtype.kind not in "uif":
        raise InputError(f"{path} has dtype {array.dtype}: expected integer or float pixel values")
    array = _to_nchw(array, path, in_channels, image_size, dataset)
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError(f"{path} contains NaN or inf values: fix or drop those images")
    if pixel_scale is not None and not pixel_scale > 0:
        raise InputError(f"--pixel-scale must be positive, got {pixel_scale}")
    scale = pixel_scale if pixel_scale is not None else (255.0 if array.dtype.kind in "ui" else 1.0)
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > scale:
        hint = (" (0-255 data? pass --pixel-scale 255)" if pixel_scale is None and scale == 1.0 and high <= 255
                else f": rescale to [0, {scale:g}] or pass the right --pixel-scale")
        raise InputError(f"{path} has values in [{low:g}, {high:g}], outside [0, {scale:g}]{hint}")
    return torch.from_numpy(values / scale).float()


# ------------------------------------------------------------------------------ fitting detectors
def _session(args, ckpt, device):
    from ..detectors.session import DetectorSession, DetectorSettings

    settings = DetectorSettings(fpr=args.fpr, n_per_class=args.n_per_class, bandwidth_sq=args.bandwidth_sq,
                                calibration_size=args.calibration_size, split_seed=args.split_seed,
                                refit=args.refit, data_dir=args.data_dir, batch_size=args.batch_size,
                                fit_adversarial=args.fit_adversarial, fit_attack=args.fit_attack,
                                fit_eps=args.fit_eps, fit_n=args.fit_n, gaussian_n=args.gaussian_n,
                                magnitude=args.magnitude)
    return DetectorSession(ckpt, settings, device=device)


def _detector(session, metric):
    detector, info = session.detector(metric)
    print_notes(info.notes)
    return detector


def _quantiles(scores: torch.Tensor) -> dict:
    values = np.quantile(scores.double().numpy(), REPORT_QUANTILES)
    return {f"{q:g}": float(v) for q, v in zip(REPORT_QUANTILES, values)}


def _resplit_rates(calibration_scores, evaluation_scores, fpr: float, splits: int = RESPLITS) -> dict:
    """Rejection rate of held-out clean inputs over `splits` other random calibration/evaluation splits of
    the same pooled scores (seeds 1..splits): its mean shows whether the threshold rule is biased, its
    spread how far one split may land from `fpr` by chance."""
    from ..detectors import threshold_at_fpr
    from ..evaluation import rejection_rate

    pool = torch.cat([calibration_scores, evaluation_scores])
    n_cal = calibration_scores.numel()
    rates = []
    for seed in range(1, splits + 1):
        order = torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))
        threshold = threshold_at_fpr(pool[order[:n_cal]], fpr)
        rates.append(rejection_rate(pool[order[n_cal:]], threshold))
    rates = np.array(rates)
    return {"splits": splits, "mean": float(rates.mean()), "std": float(rates.std(ddof=1)),
            "min": float(rates.min()), "max": float(rates.max()),
            "within_1pp": float(np.mean(np.abs(rates - fpr) <= 0.01))}


def _report(session, metrics) -> dict:
    from ..evaluation import rejection_rate

    settings = session.settings
    start, stop = session.calibration_range()
    n_test = len(session.dataset("test"))
    eval_stop = min(n_test, stop + (stop - start))
    test = session.dataset("test")
    eval_out = session.test_outputs(stop, eval_stop)
    eval_labels = test.labels[session.test_order()[stop:eval_stop]]
    correct = eval_out.logits.argmax(1) == eval_labels
    report = {
        "checkpoint": str(session.checkpoint.directory), "dataset": session.config.dataset,
        "objective": session.config.objective, "depth": session.config.depth, "fpr": settings.fpr,
        "calibration": {"split": "test", "permutation_seed": settings.split_seed, "start": start, "stop": stop},
        "evaluation": {"split": "test", "permutation_seed": settings.split_seed, "start": stop, "stop": eval_stop,
                       "accuracy": float(correct.float().mean())},
        "metrics": {},
    }
    for name in metrics:
        detector = _detector(session, name)
        scores = session.test_scores(detector, name, stop, eval_stop)
        n = scores.numel()
        rate = rejection_rate(scores, detector.threshold_)
        report["metrics"][name] = {
            "metric": repr(detector.metric),
            "score": "log(F/(1-F)) of the confidence F" if name == "confidence" else name,
            "threshold": detector.threshold_,
            "calibration_rejection_rate": rejection_rate(detector.calibration_scores_, detector.threshold_),
            "rejection_rate": rate,
            # binomial standard error of the measured rate, for judging |rate - fpr|
            "rejection_rate_stderr": math.sqrt(max(rate * (1 - rate), 1e-12) / n),
            "n_evaluation": n,
            "rejection_rate_correct": rejection_rate(scores[correct], detector.threshold_) if correct.any() else None,
            "rejection_rate_other_splits": _resplit_rates(detector.calibration_scores_, scores, detector.fpr_),
            "calibration_quantiles": _quantiles(detector.calibration_scores_),
            "evaluation_quantiles": _quantiles(scores),
        }
    return report


def _print_report(report: dict) -> None:
    cal, ev = report["calibration"], report["evaluation"]
    print(f"{report['checkpoint']}: ResNet-{report['depth']} + {report['objective'].upper()} on {report['dataset']}, "
          f"threshold from clean test images perm[{cal['start']}:{cal['stop']}] at fpr {report['fpr']:g}, "
          f"measured on perm[{ev['start']}:{ev['stop']}] (seed {cal['permutation_seed']}; "
          f"accuracy {100 * ev['accuracy']:.2f} %)")
    head = " ".join(f"q{q:g}".rjust(11) for q in REPORT_QUANTILES)
    print(f"{'metric':<11}{'threshold':>12}{'rejected':>10}{'resplits':>16} {head}")
    for name, m in report["metrics"].items():
        quants = " ".join(f"{v:11.6g}" for v in m["evaluation_quantiles"].values())
        other = m["rejection_rate_other_splits"]
        print(f"{name:<11}{m['threshold']:12.6g}{100 * m['rejection_rate']:9.2f}%"
              f"{100 * other['mean']:9.2f}±{100 * other['std']:.2f}% {quants}")
    print(f"(rejected: held-out clean inputs rejected; resplits: mean ± std of that rate over "
          f"{RESPLITS} other random splits of the same test images; quantiles of the held-out clean scores; "
          f"confidence scores are log(F/(1-F)))")


# ------------------------------------------------------------------------------------------- run
def check_arguments(args) -> None:
    """Every option and input of `rcedetect detect`, before the weights, the data or the input are read."""
    from .. import validate
    from ..data import split_size
    from ..detectors.session import DetectorSettings
    from ._common import check_options, checkpoint_dataset

    check_options(args)
    DetectorSettings(fpr=args.fpr, n_per_class=args.n_per_class, bandwidth_sq=args.bandwidth_sq,
                     calibration_size=args.calibration_size, split_seed=args.split_seed, batch_size=args.batch_size)
    config = checkpoint_dataset(args.checkpoint)
    n_test = split_size(config.dataset, "test")
    validate.integer(args.calibration_size, "--calibration-size", high=n_test - 1,
                     meaning=f"clean {config.dataset} test images that set the threshold; the rest are held out")
    if args.report:
        if args.pixel_scale is not None:
            raise InputError("--pixel-scale applies to --input files, not to --report: drop it")
        if args.output is not None:
            validate.output_file(args.output, "--output", suffixes=(".json",))
    else:
        if args.output is not None:
            raise InputError("--output applies only with --report (results of --input go to stdout): drop it, "
                             "or redirect stdout")
        validate.input_file(args.input, "--input", suffixes=tuple(READERS))


def run(args) -> int:
    from ..checkpoints import load_checkpoint
    from ..data import DATASETS
    from ..devices import resolve_device
    from ..files import atomic_write_json

    check_arguments(args)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    session = _session(args, ckpt, device)

    if args.report:
        report = _report(session, [args.metric] if args.metric else [m.value for m in PAPER_METRICS])
        out = Path(args.output) if args.output else ckpt.directory / "detect-report.json"
        atomic_write_json(out, report)
        if args.json_stdout:
            print(json.dumps(report, indent=2))
        else:
            _print_report(report)
            print(f"-> {out}")
        return 0

    info = DATASETS[ckpt.config.dataset]
    x = load_input(args.input, in_channels=info.in_channels, image_size=info.image_size, dataset=info.name,
                   pixel_scale=args.pixel_scale)
    name = args.metric or Metric.KD
    detector = _detector(session, name)
    # SelectiveClassifier's rule (accept when score > threshold_), keeping the class of rejected inputs too.
    scores, logits = session.score_images(detector, name, x)
    accepted = scores > detector.threshold_
    predicted = logits.argmax(1)
    rows = [{"index": i, "prediction": int(pred) if ok else "NOT SURE", "predicted_class": int(pred),
             "accepted": bool(ok), "score": float(score)}
            for i, (ok, pred, score) in enumerate(zip(accepted.tolist(), predicted.tolist(), scores.tolist()))]
    if args.json_stdout:
        print(json.dumps({"checkpoint": str(ckpt.directory), "input": str(args.input), "metric": name,
                          "threshold": detector.threshold_, "fpr": detector.fpr_, "results": rows}, indent=2))
    else:
        print(f"# metric {name}, threshold {detector.threshold_:.6g} (set to reject {100 * args.fpr:g} % of clean "
              f"test inputs); index, label or NOT SURE, score (higher = more normal)")
        for row in rows:
            print(f"{row['index']}\t{row['prediction']}\tscore {row['score']:.6g}")
    return 0
