"""Running under `torchrun`: which rank this process is, its device, and the few collectives the
reproduction and the training need.

    world = distributed.setup("auto")      # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    world.device                           # cuda:LOCAL_RANK, or the CPU with this rank's share of the threads
    world.barrier()                        # every rank waits here; a rank that died raises PeerStopped

Without torchrun (or with one process) `setup` initialises nothing and returns `SINGLE`, whose
collectives return at once: every caller behaves exactly as in a plain process.

One process group per job, initialised by `init_process_group` from torchrun's environment: gloo on
CPUs; on GPUs `cpu:gloo,cuda:nccl` -- NCCL carries DDP's gradients, gloo the control collectives
(small CPU tensors), so that a rank which dies is noticed by the others as a closed connection
instead of a hang until NCCL's timeout. The group's timeout (`RCEDETECT_DIST_TIMEOUT`, seconds,
default 24 h) bounds how long a rank waits for the others at a barrier: a reproduction's ranks wait
there while another rank trains a model, which takes hours at the paper's scale.
"""

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import InputError, RceDetectError

TIMEOUT_ENV = "RCEDETECT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600


class PeerStopped(RceDetectError):
    """A collective failed because another rank stopped (its own error names it and its cell)."""


class RankFailed(RceDetectError):
    """The error of one rank, naming the rank and what it was doing."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise InputError(f"${name}={value!r} is not a whole number: launch with torchrun, which sets it") from None


@dataclass(frozen=True)
class World:
    """This process's place in the job: `rank` of `size`, `local_rank` of `local_size` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        """Whether there are other ranks (collectives do something)."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that holds the run folder's lock, writes run.json, checkpoints and the report."""
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size}"

    # ---------------------------------------------------------------------------- collectives
    def _wait(self, start, poll=None) -> None:
        """Run the collective `start()` returns (its async work), calling `poll` while it waits."""
        try:
            work = start()
            if poll is None:
                work.wait()
                return
            while not work.is_completed():
                poll()
                time.sleep(0.5)
            work.wait()
        except RuntimeError as exc:  # gloo / NCCL: a peer closed its connection, or the timeout passed
            raise PeerStopped(f"{self.describe()} stopped: another rank failed or was killed (its error names "
                              f"its rank and cell; {type(exc).__name__}: {' '.join(str(exc).split())[:200]}): run "
                              f"the same command again to continue") from None

    def all_min(self, values, *, poll=None) -> list:
        """The element-wise minimum of a list of ints over all ranks (a consensus on flags: 1 only
        where every rank says 1). `poll()` is called about twice a second while the others are not
        there yet (rank 0's progress display)."""
        values = [int(v) for v in values]
        if not self.active:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values + [0], dtype=torch.int64)  # never empty
        self._wait(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MIN, async_op=True), poll)
        return tensor[:-1].tolist()

    def barrier(self, *, poll=None) -> None:
        """Every rank waits until all are here (see `all_min` for `poll`)."""
        self.all_min([], poll=poll)

    def all_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of `tensor` (a loss to record), on its device."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        tensor = tensor.detach().clone()
        dist.all_reduce(tensor)
        return tensor / self.size


SINGLE = World()
_current = SINGLE


def current() -> World:
    """The `World` set up by `setup` in this process (`SINGLE` without torchrun)."""
    return _current


def launched() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return _env_int("WORLD_SIZE", 1) > 1


def _cpu_threads(local_size: int) -> int:
    """This rank's share of the node's cores; OMP_NUM_THREADS (torchrun sets 1 when it is unset) caps it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores // max(1, local_size)))


def setup(device_name: str = "auto") -> World:
    """Join the torchrun job this process belongs to (once) and return its `World`; without torchrun,
    `SINGLE` on the device `device_name` names (nothing initialised, nothing changed)."""
    global _current
    from .devices import resolve_device

    if not launched():
        device = resolve_device(device_name)
        return World(device=device) if device != SINGLE.device else SINGLE
    if _current.active:
        return _current
    import torch.distributed as dist

    rank, size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank, local_size = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): start at "
                             f"most {torch.cuda.device_count()} processes per node (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        torch.set_num_threads(_cpu_threads(local_size))
        backend = "gloo"
    timeout = timedelta(seconds=_env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    _current = World(rank=rank, size=size, local_rank=local_rank, local_size=local_size, device=device)
    return _current


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    global _current
    if _current.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _current = SINGLE


def longest_first(costs, size: int) -> list:
    """Deterministic longest-processing-time assignment: the owner rank of each item (costs in
    seconds), biggest first onto the least-loaded rank (ties: the item's plan order, the lower rank)."""
    loads = [0.0] * size
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        owner[i] = rank
        loads[rank] += costs[i]
    return owner


__all__ = ["DEFAULT_TIMEOUT_S", "PeerStopped", "RankFailed", "SINGLE", "TIMEOUT_ENV", "World", "current", "launched",
           "longest_first", "setup", "shutdown"]
