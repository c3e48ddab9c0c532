"""The forward+backward floor of a C&W iteration and the layout / autograd options that could lower it.

    .venv/bin/python benchmarks/cw_floor.py CHECKPOINT [--batches 1 10 36 100 --blocks 5 --reps 5]

Per batch size, seconds per image of one forward+backward w.r.t. the input of the checkpoint's model,
four variants interleaved block by block (so machine noise hits them alike; best block kept):
weights requiring grad or frozen (`requires_grad_(False)`: autograd then keeps nothing for weight
gradients), input NCHW or channels_last. Also one full iteration of our engine (`cw_l2_search`, no
early abort, the full batch every iteration) per image, and its ratio to the fastest variant: the
engine's own overhead (the loss, the success bookkeeping, Adam) on top of the passes.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cw_matrix import floor_seconds  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 10, 36, 100])
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--engine-iters", type=int, default=20)
    args = p.parse_args(argv)
    from rcedetect.attacks import random_targets
    from rcedetect.attacks.cw import cw_l2_search
    from rcedetect.checkpoints import load_checkpoint
    from rcedetect.data import load_dataset

    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model.eval()
    data = load_dataset(loaded.config.dataset, "test", None)
    print(f"{loaded.config.dataset} ResNet-{loaded.config.depth}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ms per image (best of {args.blocks} blocks of {args.reps})")
    print("batch  grad+NCHW  frozen+NCHW  grad+CL  frozen+CL  engine  engine/best")
    for batch in args.batches:
        x = data.float_images(slice(0, batch))
        variants = {(frozen, cl): float("inf") for frozen in (False, True) for cl in (False, True)}
        engine = float("inf")
        target = random_targets(data.labels[:batch], model.num_classes, seed=0)
        for _ in range(args.blocks):
            for frozen, cl in variants:
                seconds = floor_seconds(model, x, blocks=1, reps=args.reps, frozen=frozen, channels_last=cl)
                variants[frozen, cl] = min(variants[frozen, cl], seconds)
            t0 = time.perf_counter()
            cw_l2_search(model, x, target, targeted=True, binary_search_steps=1, max_iters=args.engine_iters,
                         abort_early=False)
            engine = min(engine, (time.perf_counter() - t0) / args.engine_iters / batch)
        cells = "  ".join(f"{variants[k] * 1e3:9.2f}" for k in variants)
        print(f"{batch:5d}  {cells}  {engine * 1e3:6.2f}  {engine / min(variants.values()):10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
