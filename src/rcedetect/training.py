"""Training loop for CE and RCE ResNets (appendix B.1): SGD with momentum 0.9, batch 128,
weight decay 2e-4 and the paper's piecewise learning rate.

Determinism and resumption: every source of randomness is a function of (seed, step) — the
data order is a seeded permutation per epoch and the CIFAR-10 augmentation draws from a
generator seeded per step — so the only state to save is the weights, BN statistics, momentum
buffers and the step. They go into one safetensors file, replaced atomically every
`checkpoint_every` steps; a run killed at any moment (even `kill -9`) resumes from the last
save and, on CPU, ends with weights bit-identical to an uninterrupted run.

Under torchrun (`world`, from `rcedetect.distributed.setup`) the model is wrapped in
DistributedDataParallel and every step's global batch (`batch_size`, 128 by default) is the one a
single process would use, split into equal contiguous shares, one per rank (augmented as a whole
first, so every image gets the augmentation it gets in one process); the learning-rate schedule is
unchanged. DDP averages the gradients, so a step equals the single-process step except for two
things: BatchNorm normalises each rank's share with that share's statistics (`sync_bn=True`:
SyncBatchNorm, statistics of the whole batch, CUDA only), and the floating-point order of the
gradient reduction. The running BN statistics that are saved are rank 0's (DDP broadcasts rank 0's
buffers at every step). Rank 0 alone writes the training state and the checkpoint; a run killed in
any rank resumes with the same command and --resume.
"""

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from . import __version__
from .augment import augmentation_of
from .checkpoints import TRAIN_LOSS_FILE, TRAIN_STATE_FILE, WEIGHTS_FILE, build_model, save_checkpoint
from .config import TrainConfig
from .data import load_dataset
from .devices import resolve_device
from .distributed import SINGLE
from .errors import CheckpointError, InputError, RceDetectError
from .files import atomic_save_tensors, read_tensors, remove_stale_temps
from .locks import FolderLock
from .validate import output_folder
from .inference import accuracy
from .losses import OBJECTIVES
from .names import Precision

# Seeds of the per-epoch data order and per-step augmentation: distinct streams from one seed.
_EPOCH_STREAM, _AUGMENT_STREAM = 1_000_003, 2_000_003
_HOLDOUT_SEED = 3_000_017


def _param_groups(model: torch.nn.Module, weight_decay: float):
    # Weight decay on conv and linear weights only, as in the TF ResNet the authors built on
    # (it decays the 'DW' variables); BN scales/shifts and biases are not decayed.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def holdout_split(n: int, holdout: int):
    """(trained, held out) indices of n training examples: the last `holdout` of a permutation fixed
    for every seed and config, so runs of one recipe tuned against each other hold out the same images."""
    if holdout >= n:
        raise InputError(f"--holdout {holdout} leaves no training images of {n}: pass a smaller --holdout")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_HOLDOUT_SEED))
    return order[:n - holdout], order[n - holdout:]


def batch_indices(config: TrainConfig, step: int, n: int) -> torch.Tensor:
    """Indices of the training examples used at `step`: a seeded permutation per epoch, drop-last."""
    per_epoch = n // config.batch_size
    epoch, offset = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(config.seed * _EPOCH_STREAM + epoch)
    order = torch.randperm(n, generator=generator)
    return order[offset * config.batch_size:(offset + 1) * config.batch_size]


def _save_train_state(path: Path, model, optimizer, config: TrainConfig, step: int, seconds: float,
                      losses: torch.Tensor) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["loss_curve"] = losses[:step].cpu()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        buffer = optimizer.state.get(p, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{i}"] = buffer
    metadata = {"config": json.dumps(config.to_dict(), sort_keys=True), "step": str(step),
                "train_seconds": repr(seconds), "rcedetect_version": __version__}
    atomic_save_tensors(path, tensors, metadata)


def _check_same_config(path: Path, saved: dict, config: TrainConfig) -> None:
    current = config.to_json_dict()
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise CheckpointError(
            f"{path} belongs to a run with other settings (differs in {', '.join(changed)}): "
            f"resume with the same options, or use a new --out"
        )


def _saved_state_config(path: Path) -> dict:
    """The config stored in a train state's header (the tensors are not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return json.loads(metadata.get("config", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable training state ({exc}): delete it to start the run "
                              f"again from step 0, or use a new --out") from exc


def _load_train_state(path: Path, model, optimizer, config: TrainConfig, losses: torch.Tensor):
    tensors, metadata = read_tensors(path)
    _check_same_config(path, json.loads(metadata.get("config", "{}")), config)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    step = int(metadata["step"])
    if "loss_curve" in tensors:
        losses[:step] = tensors["loss_curve"][:step]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        if f"momentum.{i}" in tensors:
            # in the parameter's memory layout (channels_last), as SGD creates it: bit-identical steps
            optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(tensors[f"momentum.{i}"])
    return step, float(metadata.get("train_seconds", "0"))


def train(config: TrainConfig, out_dir, *, device="cpu", resume: bool = False, progress: bool = True,
          data_dir=None, world=None, sync_bn: bool = False) -> Path:
    """Train a model as `config` says, saving to `out_dir`; returns the checkpoint folder.

    Holds `out_dir`'s folder lock while it trains (`rcedetect.locks`): a second writer is refused with the
    holder's PID. `world`: the torchrun job to train with DDP (module docstring; rank 0 holds the lock);
    None trains in this process alone. `sync_bn`: SyncBatchNorm across the ranks (CUDA only)."""
    world = world or SINGLE
    out_dir = output_folder(out_dir, "--out")
    device = world.device if world.active else (resolve_device(device) if isinstance(device, str) else device)
    _check_distributed(config, world, device, sync_bn)
    augment = augmentation_of(config.augment)
    _check_out_dir(out_dir, config, resume)
    if resume and (out_dir / WEIGHTS_FILE).exists() and not (out_dir / TRAIN_STATE_FILE).exists():
        return out_dir  # already finished with these settings: nothing to continue
    # One writer per checkpoint folder: a second `train` (or a reproduction training the same model) is refused.
    with FolderLock(out_dir, "training") if world.is_main else nullcontext():
        if world.is_main:
            remove_stale_temps(out_dir)  # of a killed writer: nobody else writes here now
        world.barrier()  # the other ranks start once rank 0 holds the lock; nobody writes before
        _check_out_dir(out_dir, config, resume)  # again under the lock: another process may have finished it
        if resume and (out_dir / WEIGHTS_FILE).exists() and not (out_dir / TRAIN_STATE_FILE).exists():
            return out_dir
        return _train(config, out_dir, device=device, resume=resume, progress=progress and world.is_main,
                      data_dir=data_dir, augment=augment, world=world, sync_bn=sync_bn)


def _check_distributed(config: TrainConfig, world, device, sync_bn: bool) -> None:
    if sync_bn and not world.active:
        raise InputError("--sync-bn synchronises BatchNorm across the ranks of a torchrun job: launch with "
                         "'torchrun --nproc-per-node N -m rcedetect train ...', or drop it")
    if sync_bn and device.type != "cuda":
        raise InputError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel): drop it, or "
                         "train on GPUs")
    if config.batch_size % world.size:
        raise InputError(f"the batch of {config.batch_size} cannot be split equally over {world.size} ranks: use a "
                         f"number of ranks that divides it")


def _check_out_dir(out_dir: Path, config: TrainConfig, resume: bool) -> None:
    """Refuse, before any data is loaded, an --out that holds another run or a finished one without --resume."""
    state_path = out_dir / TRAIN_STATE_FILE
    if (out_dir / WEIGHTS_FILE).exists() and not state_path.exists():
        if not resume:
            raise RceDetectError(f"{out_dir} already holds a trained model: choose another --out, or delete it "
                                 f"to re-train")
        from .checkpoints import checkpoint_config

        _check_same_config(out_dir / WEIGHTS_FILE, checkpoint_config(out_dir).to_json_dict(), config)
    if state_path.exists():
        if not resume:
            raise RceDetectError(f"{out_dir} holds an unfinished run: pass --resume to continue it, or choose "
                                 f"another --out")
        _check_same_config(state_path, _saved_state_config(state_path), config)


def _train(config: TrainConfig, out_dir: Path, *, device, resume: bool, progress: bool, data_dir, augment,
           world=SINGLE, sync_bn: bool = False) -> Path:
    from tqdm.auto import tqdm

    state_path = out_dir / TRAIN_STATE_FILE

    train_set = load_dataset(config.dataset, "train", data_dir)
    test_set = load_dataset(config.dataset, "test", data_dir) if not config.holdout else None
    loss_fn = OBJECTIVES[config.objective]

    torch.manual_seed(config.seed)
    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(_param_groups(model, config.weight_decay), lr=config.lr_values[0],
                                momentum=config.momentum)
    losses = torch.zeros(config.steps, dtype=torch.float64, device=device)
    start, seconds_before = 0, 0.0
    if resume and state_path.exists():
        start, seconds_before = _load_train_state(state_path, model, optimizer, config, losses)
    net = model
    if world.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    share = slice(world.rank * config.batch_size // world.size, (world.rank + 1) * config.batch_size // world.size)

    images, labels = train_set.images.to(device), train_set.labels.to(device)
    trained = held_out = None
    if config.holdout:
        trained, held_out = holdout_split(len(train_set), config.holdout)
        trained = trained.to(device)
    n_train = len(train_set) - config.holdout
    mixed = config.precision == Precision.BFLOAT16  # autocast: weights, gradients and SGD stay float32
    net.train()
    bar = tqdm(total=config.steps, initial=start, desc=f"train {config.dataset} {config.objective.upper()}-"
               f"ResNet{config.depth}", unit="step", disable=not progress, dynamic_ncols=True)
    t0, window_t, window_images, correct, seen = time.perf_counter(), time.perf_counter(), 0, 0, 0
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(step)
        index = batch_indices(config, step, n_train).to(device)
        if trained is not None:
            index = trained[index]
        x = images[index].float().div_(255.0)
        if config.augment:
            generator = torch.Generator().manual_seed(config.seed * _AUGMENT_STREAM + step)
            x = augment(x, generator)
        x = x[share].contiguous(memory_format=torch.channels_last)
        y = labels[index][share]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
            logits = net(x)
        loss = loss_fn(logits.float(), y)  # shown unscaled; the gradient step uses loss_scale
        optimizer.zero_grad(set_to_none=True)
        (loss * config.loss_scale).backward()
        optimizer.step()
        losses[step] = world.all_mean(loss.detach())

        window_images += y.shape[0] * world.size
        if progress and (step % 10 == 9 or step + 1 == config.steps):
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.shape[0]
            now = time.perf_counter()
            bar.set_postfix(loss=f"{losses[step].item():.3f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{window_images / (now - window_t):.0f}", lr=config.learning_rate(step))
            window_t, window_images, correct, seen = now, 0, 0, 0
        bar.update(1)
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps and world.is_main:
            _save_train_state(state_path, model, optimizer, config, step + 1,
                              seconds_before + time.perf_counter() - t0, losses)
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - t0

    if world.is_main:
        model.eval()
        if held_out is None:
            test_accuracy = accuracy(model, test_set.images, test_set.labels, device=device)
            metrics = {"test_accuracy": test_accuracy, "test_error": 1.0 - test_accuracy}
        else:  # a tuning run: the test set stays unseen
            holdout_accuracy = accuracy(model, train_set.images[held_out], train_set.labels[held_out], device=device)
            metrics = {"holdout_accuracy": holdout_accuracy, "holdout_error": 1.0 - holdout_accuracy,
                       "holdout": config.holdout}
        metrics.update(train_seconds=train_seconds, device=str(device), torch_version=torch.__version__)
        if world.active:
            metrics.update(world_size=world.size, sync_bn=sync_bn)
        atomic_save_tensors(out_dir / TRAIN_LOSS_FILE, {"loss": losses.cpu()},
                            {"world_size": str(world.size), "sync_bn": str(sync_bn)})
        if sync_bn:
            model = _plain_batchnorm(model, config)
        save_checkpoint(out_dir, model.to(memory_format=torch.contiguous_format), config, metrics)
        state_path.unlink(missing_ok=True)
    world.barrier()  # the others return once the checkpoint is written
    return out_dir


def _plain_batchnorm(model, config: TrainConfig):
    """The trained weights in the ordinary model (SyncBatchNorm has the same parameters and buffers)."""
    plain = build_model(config).to(next(model.parameters()).device)
    plain.load_state_dict(model.state_dict())
    return plain
