"""The run loop behind `rcedetect reproduce`: plan the cells, skip the stored ones, compute the rest.

    from rcedetect.reproduce import Reproduction
    Reproduction("mnist", "quick", "runs/mnist-quick").run()

`Reproduction` ties the three units together and owns nothing else: the resources
(`context.RunContext`), the cells (`cells.plan`) and the resumable store (`store.CellStore`). It
writes RUN/run.json (dataset, preset settings, estimate) and, per cell, RUN/cells/<name>.json.

Under torchrun (`rcedetect.distributed`), every rank plans the same cells and agrees with the others
on which are pending, then runs three phases separated by barriers: the pending `train` cells, each
on one rank (longest first onto the least-loaded rank), so every model exists before anyone uses
it; the `spread` cells in plan order on every rank, which share out the chunks of their attacks
(`CellStore.spread`) while rank 0 writes their JSON; the other cells, each on one rank (longest
first). Rank 0 alone holds the run folder's lock, removes stale temporary files and writes run.json
before the first barrier. The numbers do not depend on the phases: every cell is a function of its
config, and every chunk of the preset's chunk size is computed as in one process.
"""

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from .. import distributed
from ..devices import resolve_device
from ..distributed import PeerStopped, RankFailed
from ..errors import InputError, RceDetectError
from ..files import atomic_write_json
from ..files import remove_stale_temps
from ..locks import FolderLock, is_locked
from ..validate import output_folder
from ..names import Dataset
from .cells import Cell, plan
from .context import RunContext
from .costs import COSTS, CostModel
from .presets import ReproPreset, get_preset
from .progress import Progress
from .store import CellStore, normalise

RUN_FORMAT = "rcedetect-run-v1"


@dataclass(frozen=True)
class PlannedCell:
    """A cell of this run with its config and estimated cost evaluated (what `--list` prints)."""

    name: str
    config: dict
    cost: float  # estimated seconds on a quiet 2-core CPU: weights the overall ETA
    cell: Cell


class Reproduction:
    """One reproduction run: `run()` computes (or skips) every cell into `out`.

    Args:
        dataset: 'mnist' or 'cifar10'.
        preset: 'quick', 'paper', 'toy', or a `ReproPreset`.
        out: the run folder (models, cells, cache, report).
        device: 'auto', 'cpu' or 'cuda'.
        data_dir: dataset folder (default: $RCEDETECT_DATA_DIR, else the cache folder).
        progress: show the progress display (tqdm).
        costs: the cost model behind the ETA and `estimate_seconds`.

    Under torchrun (after `distributed.setup`), the run is shared out among the ranks and every rank
    computes on its own device (`World.device`, which replaces `device`).
    """

    def __init__(self, dataset, preset="quick", out=None, *, device="auto", data_dir=None, progress=True,
                 costs: CostModel = COSTS):
        dataset = Dataset.coerce(dataset)
        self.preset = preset if isinstance(preset, ReproPreset) else get_preset(dataset, preset)
        if self.preset.dataset != dataset:
            raise InputError(f"preset is for {self.preset.dataset}, not {dataset}")
        self.dataset = dataset
        self.run_dir = Path(out if out is not None else f"runs/{dataset}-{self.preset.name}")
        self.world = distributed.current()
        if self.world.active:
            self.device = self.world.device
        else:
            self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.data_dir = data_dir
        self.progress_enabled = progress
        self.costs = costs
        self.store = CellStore(self.run_dir, device=self.device, world=self.world)
        self.context = RunContext(self.preset, self.run_dir, device=self.device, data_dir=data_dir,
                                  store=self.store, train_progress=progress and self.world.is_main)
        self.wall_seconds = None

    # Identities the CLI and tests ask for (the context's).
    def model_identity(self, which: int, objective) -> dict:
        return self.context.model_identity(which, objective)

    def checkpoint_dir(self, which: int, objective) -> Path:
        return self.context.checkpoint_dir(which, objective)

    def cells(self) -> list:
        """The cells of this run, in order, with their configs and estimated costs (`PlannedCell`s)."""
        ctx = self.context
        return [PlannedCell(c.name, c.config(ctx), c.cost(ctx, self.costs), c) for c in plan(self.preset)]

    def estimate_seconds(self, world_size: int = 1) -> float:
        """The plan's estimated seconds on a quiet 2-core CPU (the cost model of `costs`); with
        `world_size` > 1, the wall time of the torchrun schedule (module docstring) on that many such
        devices: each phase lasts as long as its busiest rank, and a spread cell as long as the rank
        with the most of its chunks (an estimate: it ignores the barriers' waits and file traffic)."""
        planned = self.cells()
        if world_size <= 1:
            return sum(c.cost for c in planned)
        chunk = self.preset.chunk
        total = 0.0
        for cells, owners in self._phases(planned, world_size):
            if owners and owners[0] is None:
                for c in cells:
                    chunks = max(1, -(-c.cell.spread_n(self.context) // chunk))
                    total += c.cost * -(-chunks // world_size) / chunks
            else:
                loads = [0.0] * world_size
                for c, owner in zip(cells, owners):
                    loads[owner] += c.cost
                total += max(loads)
        return total

    def check_run_folder(self) -> None:
        """Refuse, before anything is loaded or written, a run folder that is a file, cannot be written,
        or holds a run of another dataset / preset."""
        output_folder(self.run_dir, "--out")
        path = self.run_dir / "run.json"
        if path.exists():
            try:
                info = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                info = {}
            info = info if isinstance(info, dict) else {}
            if info.get("dataset", self.dataset) != self.dataset or info.get("preset", self.preset.name) != self.preset.name:
                raise InputError(f"{self.run_dir} is a {info.get('dataset')} / {info.get('preset')} run: "
                                 f"use another --out for --dataset {self.dataset} --preset {self.preset.name}")

    def select(self, only=None) -> list:
        """The planned cells whose names start with one of the prefixes `only` (all when None); a prefix
        that matches no cell is refused, listing the cell kinds."""
        planned = self.cells()
        if not only:
            return planned
        for prefix in only:
            if not any(c.name.startswith(prefix) for c in planned):
                kinds = sorted({c.name.split(".", 1)[0] for c in planned})
                raise InputError(f"--only {prefix} matches no cell of this run: use a prefix of a cell name "
                                 f"({', '.join(kinds)}; --list shows them all)")
        return [c for c in planned if any(c.name.startswith(prefix) for prefix in only)]

    def _remove_stale_temps(self) -> None:
        """Delete the temporary files of killed writers (call it holding the run folder's lock, before
        anything is written: nobody else writes here then)."""
        cache = self.store.cache_dir
        models = [m for m in (self.run_dir / "models").glob("*") if not is_locked(m)]  # not one a `train` writes
        for folder in (self.run_dir, self.store.cells_dir, cache, *cache.glob("*.parts"), *models):
            remove_stale_temps(folder)

    def _write_run_info(self) -> None:
        path = self.run_dir / "run.json"
        self.check_run_folder()
        atomic_write_json(path, {"format": RUN_FORMAT, "dataset": self.dataset, "preset": self.preset.name,
                                 "settings": normalise(self.preset.to_dict()), "rcedetect_version": __version__,
                                 "estimated_quiet_cpu_seconds": self.estimate_seconds()})

    def run(self, only=None) -> dict:
        """Compute every cell not already stored (or only those whose name starts with one of `only`).

        Returns {cell name: result}. A cell that raises stops the run; cells finished before it stay
        stored, and the next run continues from it.
        """
        self.check_run_folder()
        planned = self.select(only)
        if self.world.active:
            return self._run_spread(planned)
        # One writer per run folder (`rcedetect.locks`): a second reproduce / demo on it is refused.
        with FolderLock(self.run_dir, "reproduce"):
            self._remove_stale_temps()
            self._write_run_info()
            weights = self.context.weights_sha256
            done = [self.store.is_done(c.name, c.config, weights=weights(c.config)) for c in planned]
            progress = Progress([c.cost for c in planned], done, self.progress_enabled)
            results = {}
            started = time.perf_counter()
            try:
                for i, c in enumerate(planned):
                    progress.start(i, c.name, c.cost)
                    results[c.name] = self.store.compute(
                        c.name, c.config, lambda: c.cell.compute(self.context, progress), seed=self.preset.seed,
                        weights=lambda: weights(c.config), run={"dataset": self.dataset, "preset": self.preset.name})
                    progress.finish()
            finally:
                progress.close()
            self.wall_seconds = time.perf_counter() - started
        return results

    # ----------------------------------------------------------------------------- under torchrun
    def _phases(self, pending, size: int) -> list:
        """[(cells, owner rank of each: None = every rank)] of the three phases (module docstring)."""
        trains = [c for c in pending if c.cell.trains]
        spread = [c for c in pending if c.cell.spread and not c.cell.trains]
        others = [c for c in pending if not c.cell.trains and not c.cell.spread]
        return [(trains, distributed.longest_first([c.cost for c in trains], size)),
                (spread, [None] * len(spread)),
                (others, distributed.longest_first([c.cost for c in others], size))]

    def _run_spread(self, planned) -> dict:
        world, store = self.world, self.store
        weights = self.context.weights_sha256
        # One writer per run folder: rank 0 holds the lock for the job; the others start once it has it.
        with FolderLock(self.run_dir, f"reproduce, rank 0 of {world.size}") if world.is_main else nullcontext():
            if world.is_main:
                self._remove_stale_temps()  # no rank writes before the barrier below
                self._write_run_info()
            # Every rank looks before anyone writes; a cell is pending unless every rank found it stored.
            done = [bool(d) for d in world.all_min(
                [store.is_done(c.name, c.config, weights=weights(c.config)) for c in planned])]
            pending = [c for c, d in zip(planned, done) if not d]
            phases = self._phases(pending, world.size)
            progress = Progress([c.cost for c in planned], done, self.progress_enabled and world.is_main,
                                note=f"{world.size} ranks")
            elsewhere = _Elsewhere(store, [c for cells, owners in phases for c, o in zip(cells, owners)
                                           if o is not None and o != world.rank], progress, world.is_main)
            started = time.perf_counter()
            try:
                for cells, owners in phases:
                    store.spread = world if owners and owners[0] is None else None
                    for c, owner in zip(cells, owners):
                        if owner is None or owner == world.rank:
                            progress.start(progress.finished, c.name, c.cost)
                            self._compute_here(c, progress, every_rank=owner is None)
                            progress.finish()
                        elsewhere.poll()
                    progress.waiting()
                    world.barrier(poll=elsewhere.poll)
            finally:
                store.spread = None
                progress.close()
            self.wall_seconds = time.perf_counter() - started
        results = {}
        for c in planned:
            record = store.load(c.name)
            if record is None:
                raise RceDetectError(f"{store.path(c.name)} is missing or unreadable on {world.describe()} after "
                                     f"every rank finished: every rank must share the run folder (the same path "
                                     f"on a shared file system)")
            results[c.name] = record["result"]
        return results

    def _compute_here(self, c, progress, *, every_rank: bool):
        """Cell `c` computed on this rank (a spread cell: by every rank, recorded by rank 0); a failure
        becomes one error naming the rank and the cell."""
        world, ctx = self.world, self.context
        kwargs = dict(seed=self.preset.seed, weights=lambda: ctx.weights_sha256(c.config),
                      run={"dataset": self.dataset, "preset": self.preset.name})
        fn = lambda: c.cell.compute(ctx, progress)  # noqa: E731
        try:
            if every_rank:
                # Pending by consensus: no rank may skip it on its own (the ranks meet inside its chunks).
                return self.store.recompute(c.name, c.config, fn, write=world.is_main, **kwargs)
            return self.store.compute(c.name, c.config, fn, **kwargs)
        except (PeerStopped, KeyboardInterrupt):
            raise
        except RceDetectError as exc:
            raise RankFailed(f"rank {world.rank} failed in cell {c.name}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 -- a bug: still one line naming where, the traceback chained
            raise RankFailed(f"rank {world.rank} failed in cell {c.name}: {type(exc).__name__}: {exc}: run the "
                             f"same command again to continue (stored cells and chunks are kept)") from exc


class _Elsewhere:
    """Rank 0's view of the cells other ranks compute: each moves the overall progress bar when its
    JSON appears in the shared run folder (a stat per cell, at most twice a second)."""

    def __init__(self, store, planned, progress, enabled: bool):
        self.store, self.progress = store, progress
        self.waiting = {c.name: (c.cost, self._stamp(c.name)) for c in planned} if enabled else {}
        self.last = 0.0

    def _stamp(self, name):
        try:
            return self.store.path(name).stat().st_mtime_ns
        except OSError:
            return None

    def poll(self) -> None:
        now = time.monotonic()
        if not self.waiting or now - self.last < 0.5:
            return
        self.last = now
        for name, (cost, stamp) in list(self.waiting.items()):
            current = self._stamp(name)
            if current is not None and current != stamp:
                del self.waiting[name]
                self.progress.add(cost)
