"""How much a Figure 3 curve wobbles with the number of images: one attack's accuracy over a theta/eps
grid on the first N attacked images of a reproduction run, with the paired counts between neighbours.

    .venv/bin/python benchmarks/fig3_grid_noise.py RUN --dataset cifar10 --objective rce --n 200 \\
        --grid 0.02 0.03 0.04 0.06 [--attack jsma]

RUN is a `rcedetect reproduce` folder with trained models. The attack gets exactly what the run's
Figure 3 cell gives it (the quick preset's settings, the run's images and seed); nothing is written
to RUN. Prints, per grid point, accuracy and attack success, and between neighbours the images that
went wrong -> right and right -> wrong with the sign-test p of the report's monotonicity check.
"""

import argparse
import time

import torch

from rcedetect.attacks import ATTACKS
from rcedetect.names import Attack, Objective
from rcedetect.reproduce.checks import sign_test_p
from rcedetect.reproduce.context import RunContext
from rcedetect.reproduce.presets import get_preset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run", help="reproduction folder with trained models")
    parser.add_argument("--dataset", required=True, choices=("mnist", "cifar10"))
    parser.add_argument("--objective", default="rce", choices=[o.value for o in Objective])
    parser.add_argument("--attack", default="jsma", choices=[a.value for a in Attack])
    parser.add_argument("--n", type=int, default=200, help="first N attacked images of the run (default 200)")
    parser.add_argument("--grid", type=float, nargs="+", required=True, help="eps (JSMA: theta) values")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    preset = get_preset(args.dataset, "quick")
    ctx = RunContext(preset, args.run, device=torch.device("cpu"), data_dir=args.data_dir)
    attack, objective = Attack(args.attack), Objective(args.objective)
    spec, model = ATTACKS[attack], ctx.model(0, objective)
    settings = dict(preset.attack_settings.get(attack, {}))
    x, y = ctx.images(args.n)
    x = ctx.on_device(x)
    right = {}
    for eps in args.grid:
        start = time.perf_counter()
        result = spec(model, x, y, eps=eps, seed=ctx.seed if spec.uses_seed else None, start=0, **settings)
        with torch.no_grad():
            right[eps] = model(result.x_adv).argmax(1) == y
        print(f"{args.attack} {eps:g}: accuracy {right[eps].float().mean():.3f}, success "
              f"{result.success.float().mean():.3f} ({time.perf_counter() - start:.1f} s)", flush=True)
    for e0, e1 in zip(args.grid, args.grid[1:]):
        up, down = int((~right[e0] & right[e1]).sum()), int((right[e0] & ~right[e1]).sum())
        print(f"{e0:g} -> {e1:g}: {up} wrong -> right, {down} right -> wrong, sign test p = {sign_test_p(up, down):.3g}")
    print(f"{args.dataset} {args.objective} ResNet-{preset.depths[0]}, n = {args.n}, settings {settings}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
