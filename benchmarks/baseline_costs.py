"""Fitting and scoring cost of the baseline detectors (LID, Mahalanobis-LR, unsupervised Mahalanobis)
on a trained checkpoint, per 1 000 images, through the library path `rcedetect detect` and the
reproduction's Baselines cell use (`rcedetect.detectors.supervised`).

    .venv/bin/python benchmarks/baseline_costs.py CHECKPOINT [--n 1000] [--gaussian-n 2000] [--threads 1]

Stages, each timed as wall and CPU seconds of this process:
  craft     FGSM (Table 2's eps of the dataset) on `--n` training images + matched noise + counting filter
  fit-lid   flattened activations of clean / noisy / adversarial fitting examples + minibatch LID + LR
  fit-mlr   mean activations of the same + `--gaussian-n` Gaussian images, class Gaussians + LR
  fit-m     unsupervised Mahalanobis: penultimate features of `--n` training images, class Gaussians
  score-*   one metric's inputs and scores on `--n` clean test images (each input on its own)
Per-1 000-image figures divide by the images the stage processed (fitting: attacked training images).
CPU time is the figure that survives a machine shared with other jobs (single-threaded work is not
charged while another process holds the core); wall time is printed beside it.
"""

import argparse
import json
import os
import platform
import time


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w0, time.process_time() - c0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("checkpoint", help="checkpoint folder written by 'rcedetect train'")
    parser.add_argument("--n", type=int, default=1000, help="training images attacked / test images scored")
    parser.add_argument("--gaussian-n", type=int, default=2000, help="Mahalanobis-LR Gaussian training images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from rcedetect.checkpoints import load_checkpoint
    from rcedetect.data import load_dataset
    from rcedetect.detectors import MahalanobisMetric
    from rcedetect.detectors.supervised import (DEFAULT_FIT_EPS, FitProtocol, baseline_inputs, fit_supervised,
                                                fitting_examples, fitting_indices, layer_features)
    from rcedetect.names import Dataset, Metric

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint, device="cpu")
    model, dataset = ckpt.model, Dataset.coerce(ckpt.config.dataset)
    train, test = load_dataset(dataset, "train", args.data_dir), load_dataset(dataset, "test", args.data_dir)
    protocol = FitProtocol(eps=DEFAULT_FIT_EPS[dataset], n=args.n, n_gaussian=args.gaussian_n)
    fit_index, gaussian_index = fitting_indices(len(train), protocol)
    rows = {}

    examples, w, c = timed(lambda: fitting_examples(model, train.images[fit_index], train.labels[fit_index], protocol))
    rows["craft"] = (args.n, w, c)
    fitted = {}
    lid, w, c = timed(lambda: fit_supervised(model, examples, protocol, metrics=[Metric.LID]))
    fitted.update(lid)
    rows["fit-lid"] = (args.n, w, c)
    mlr, w, c = timed(lambda: fit_supervised(model, examples, protocol, metrics=[Metric.MAHALANOBIS_LR],
                                             gaussian_images=train.images[gaussian_index],
                                             gaussian_labels=train.labels[gaussian_index]))
    fitted.update(mlr)
    rows["fit-mlr"] = (args.n, w, c)

    def fit_unsupervised():
        feats = layer_features(model, train.images[fit_index], reductions=("mean",))["mean"]["fc:input"]
        return MahalanobisMetric().fit(feats, train.labels[fit_index], num_classes=model.num_classes)

    fitted[Metric.MAHALANOBIS], w, c = timed(fit_unsupervised)
    rows["fit-m"] = (args.n, w, c)
    images = test.images[:args.n]
    for metric in (Metric.LID, Metric.MAHALANOBIS_LR, Metric.MAHALANOBIS):
        def score(metric=metric):
            inputs, _ = baseline_inputs(model, {metric: fitted[metric]}, images)
            with torch.no_grad():
                return fitted[metric].score(inputs[metric])
        _, w, c = timed(score)
        rows[f"score-{metric}"] = (args.n, w, c)

    print(f"{args.checkpoint}: ResNet-{ckpt.config.depth} {ckpt.config.objective.upper()} on {dataset}, torch "
          f"{torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; FGSM eps {protocol.eps:g}; {int(examples.labels.numel())} of {args.n} counted")
    print(f"{'stage':<20}{'images':>8}{'wall s':>10}{'cpu s':>10}{'wall s / 1k':>13}{'cpu s / 1k':>12}")
    for stage, (n, w, c) in rows.items():
        print(f"{stage:<20}{n:>8}{w:>10.2f}{c:>10.2f}{1000 * w / n:>13.2f}{1000 * c / n:>12.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {"images": n, "wall_s": w, "cpu_s": c} for k, (n, w, c) in rows.items()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
