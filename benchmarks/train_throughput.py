"""Training throughput of ResNet-32 (batch 128) against the machine's measured float32 matmul peak.

    python benchmarks/train_throughput.py [--steps 20] [--compile] [--bf16] [--device auto]

Prints, per dataset and execution variant: images/s, the model's FLOPs per image for one
training step (forward + backward, counted by torch.utils.flop_counter), achieved GFLOP/s and
the fraction of the matmul peak measured in the same process (float32; with --bf16 the bf16 autocast
rows, the quick presets' training arithmetic, are also compared with a bfloat16 matmul).
"""

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from rcedetect.devices import resolve_device
from rcedetect.losses import reverse_cross_entropy
from rcedetect.models import resnet

SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}


def matmul_gflops(device, n=2048, repeats=20, dtype=torch.float32) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(model, x, y) -> float:
    with FlopCounterMode(display=False) as counter:
        reverse_cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def images_per_second(model, x, y, steps, channels_last, compiled, autocast) -> float:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)

    def one_step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = reverse_cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (and compilation)
        one_step()
    _sync(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(x.device)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (20-30 s to compile on CPU)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    peak = matmul_gflops(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"float32 matmul (2048^3): {peak:.0f} GFLOP/s")
    peak_bf16 = matmul_gflops(device, dtype=torch.bfloat16) if args.bf16 else None
    if peak_bf16 is not None:
        print(f"bfloat16 matmul (2048^3): {peak_bf16:.0f} GFLOP/s (the bf16 rows' 'of peak' is against this one)")
    print()
    variants = [("NCHW eager", False, False, False), ("channels_last eager", True, False, False)]
    if args.compile:
        variants.append(("channels_last + compile", True, True, False))
    if args.bf16:
        variants.append(("channels_last + bf16 autocast", True, False, True))
    print(f"{'dataset':8} {'variant':32} {'img/s':>8} {'GFLOP/img':>10} {'GFLOP/s':>8} {'of peak':>8}")
    for dataset, (channels, size) in SHAPES.items():
        x = torch.rand(args.batch_size, channels, size, size, device=device)
        y = torch.randint(0, 10, (args.batch_size,), device=device)
        flops_per_image = step_flops(resnet(args.depth, channels).to(device), x, y) / args.batch_size
        for name, channels_last, compiled, autocast in variants:
            model = resnet(args.depth, channels).to(device).train()
            rate = images_per_second(model, x, y, args.steps, channels_last, compiled, autocast)
            achieved = rate * flops_per_image / 1e9
            ref = peak_bf16 if autocast else peak
            print(f"{dataset:8} {name:32} {rate:8.0f} {flops_per_image / 1e9:10.3f} {achieved:8.0f} {achieved / ref:8.1%}")


if __name__ == "__main__":
    main()
