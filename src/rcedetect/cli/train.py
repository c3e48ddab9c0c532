"""`rcedetect train`: train a CE or RCE ResNet with the paper's schedule or the quick CPU preset."""

from ..config import PRESETS, preset_config
from ..names import Dataset, Objective, Precision
from ._common import add_data_dir_argument, add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a ResNet with CE or RCE",
                                   description="Train a pre-activation ResNet with cross-entropy or reverse cross-entropy.")
    parser.add_argument("--dataset", choices=Dataset.choices(), required=True)
    parser.add_argument("--objective", choices=Objective.choices(), required=True)
    parser.add_argument("--depth", type=int, default=32,
                        help="ResNet depth 6n+2: 32 or 56 in the paper (small depths such as 8 are for tests)")
    parser.add_argument("--preset", choices=[str(p) for p in PRESETS], default=str(PRESETS[0]),
                        help="quick: minutes on a 2-core CPU; paper: appendix B.1 (20k MNIST / 90k CIFAR-10 steps)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    parser.add_argument("--precision", choices=Precision.choices(), default=None,
                        help="training arithmetic: bfloat16 mixed precision (quick's default) or float32 (paper's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=int, default=0,
                        help="hold out this many training images (a fixed split) and report the error on them instead "
                             "of the test error: for tuning a recipe without touching the test set")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between resumable saves")
    parser.add_argument("--out", required=True, help="checkpoint folder to create")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.add_argument("--sync-bn", action="store_true",
                        help="under torchrun: SyncBatchNorm, BatchNorm statistics over the whole batch instead of "
                             "each rank's share (CUDA only)")
    add_device_argument(parser)
    add_data_dir_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    """Under torchrun every rank trains its share of each batch (DDP); rank 0 writes and prints."""
    from .. import distributed
    from ..config import with_overrides
    from ..training import train
    from .eval import print_row

    from .. import validate
    from ._common import check_options

    check_options(args)
    validate.output_folder(args.out, "--out")
    config = preset_config(args.dataset, args.objective, args.preset, args.depth, args.steps, args.seed,
                           precision=args.precision, holdout=args.holdout)
    if args.checkpoint_every is not None:
        config = with_overrides(config, checkpoint_every=args.checkpoint_every)
    world = distributed.setup(args.device)
    try:
        out = train(config, args.out, device=args.device, resume=args.resume, progress=args.progress,
                    data_dir=args.data_dir, world=world, sync_bn=args.sync_bn)
    finally:
        distributed.shutdown()
    if world.is_main:
        print_row(out)
    return 0
