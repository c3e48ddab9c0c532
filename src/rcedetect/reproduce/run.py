"""The run loop behind `rcedetect reproduce`: plan the cells, skip the stored ones, compute the rest.

    from rcedetect.reproduce import Reproduction
    Reproduction("mnist", "quick", "runs/mnist-quick").run()

`Reproduction` ties the three units together and owns nothing else: the resources
(`context.RunContext`), the cells (`cells.plan`) and the resumable store (`store.CellStore`). It
writes RUN/run.json (dataset, preset settings, estimate) and, per cell, RUN/cells/<name>.json.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..devices import resolve_device
from ..errors import InputError
from ..files import atomic_write_json
from ..files import remove_stale_temps
from ..locks import FolderLock
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
    """

    def __init__(self, dataset, preset="quick", out=None, *, device="auto", data_dir=None, progress=True,
                 costs: CostModel = COSTS):
        dataset = Dataset.coerce(dataset)
        self.preset = preset if isinstance(preset, ReproPreset) else get_preset(dataset, preset)
        if self.preset.dataset != dataset:
            raise InputError(f"preset is for {self.preset.dataset}, not {dataset}")
        self.dataset = dataset
        self.run_dir = Path(out if out is not None else f"runs/{dataset}-{self.preset.name}")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.data_dir = data_dir
        self.progress_enabled = progress
        self.costs = costs
        self.store = CellStore(self.run_dir, device=self.device)
        self.context = RunContext(self.preset, self.run_dir, device=self.device, data_dir=data_dir,
                                  store=self.store, train_progress=progress)
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

    def estimate_seconds(self) -> float:
        """The plan's estimated seconds on a quiet 2-core CPU (the cost model of `costs`)."""
        return sum(c.cost for c in self.cells())

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
        # One writer per run folder (`rcedetect.locks`): a second reproduce / demo on it is refused.
        with FolderLock(self.run_dir, "reproduce"):
            for folder in (self.run_dir, self.store.cells_dir, self.store.cache_dir):
                remove_stale_temps(folder)  # left by a killed writer; nobody else writes here now
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
