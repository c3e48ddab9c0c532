"""`rcedetect demo`: the quick MNIST reproduction (= reproduce --dataset mnist --preset quick)."""

from .reproduce import add_reproduce_arguments, reproduce

DEMO_OUT = "runs/demo-mnist-quick"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="quick end-to-end reproduction on MNIST (~15-30 min on 2 CPU cores: README), with its report",
        description="Same as 'rcedetect reproduce --dataset mnist --preset quick --out runs/demo-mnist-quick'.")
    add_reproduce_arguments(parser, out_default=DEMO_OUT)
    parser.set_defaults(func=run)


def run(args) -> int:
    return reproduce("mnist", "quick", args)
