"""A resumable store of result cells: one JSON file per cell, tensors cached as safetensors.

    RUN/cells/<name>.json       {"cell", "config", "seed", "result", "provenance"}
    RUN/cache/<key>.safetensors tensors a cell computed (adversarial examples, features), reused by
                                later cells and by a resumed run
    RUN/cache/<key>.parts/      chunks of a long computation still in progress

A cell whose JSON exists with the same config (compared as JSON) is skipped; one with another config
is recomputed. Every file is written to a temporary name and renamed (atomic on POSIX), so a run
killed at any moment leaves complete files or none: rerunning continues where it stopped, and a
chunked computation (`chunked`) continues at its first missing chunk.

Under torchrun (`rcedetect.distributed`) a store whose `spread` is the job's `World` shares the
missing chunks of every chunked computation out among the ranks (round-robin over the missing
chunks, so a resumed run spreads what is left); every rank computes its chunks into the shared
RUN/cache, rank 0 joins them once all are written, and every rank returns the joined tensors. All
ranks must then make the same `chunked` calls in the same order (`Reproduction` arranges it).

Provenance (per cell): package version, git commit (when the package runs from a git checkout),
torch version, device, rank and world size of the process that wrote it, wall time and the UTC
time it finished.
"""

import hashlib
import json
import math
import platform
import subprocess
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch

from .. import __version__
from ..files import atomic_save_tensors, atomic_write_json, read_tensors
from ..errors import CheckpointError, InputError, RceDetectError

CELL_FORMAT = "rcedetect-cell-v1"
# A record's {model tag: sha256 of the checkpoint weights the cell used} (absent in runs made before it).
WEIGHTS_KEY = "weights_sha256"


def normalise(obj):
    """`obj` as it reads back from JSON (tuples -> lists, keys -> str), for comparisons with saved data."""
    return json.loads(json.dumps(obj, sort_keys=True))


def config_hash(config) -> str:
    return hashlib.sha256(json.dumps(normalise(config), sort_keys=True).encode()).hexdigest()[:16]


def check_finite(obj, where: str = "result") -> None:
    """Raise if a float in `obj` is NaN or infinite: strict JSON has no such numbers (use None)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise RceDetectError(f"{where} is {obj}: a cell result must use None for undefined numbers (bug)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


@lru_cache(maxsize=1)
def git_commit():
    """The commit of the checkout the package runs from, with '+dirty' for local changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def describe_device(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


class CellStore:
    """Cells and cached tensors of one run folder (see the module docstring)."""

    def __init__(self, run_dir, *, device="cpu", weights_of=None, world=None):
        from ..distributed import SINGLE

        self.run_dir = Path(run_dir)
        self.cells_dir = self.run_dir / "cells"
        self.cache_dir = self.run_dir / "cache"
        self.device = device
        # config -> {model tag: sha256 of its weights} (`RunContext.weights_sha256`): cached tensors record
        # it and are reused only while it is unchanged. None: no weight check (a store outside a run).
        self.weights_of = weights_of
        self.world = world or SINGLE  # recorded in the provenance
        # The World whose ranks share the chunks of `chunked` out among them; None: this process computes
        # every chunk (also under torchrun, inside a cell only this rank computes).
        self.spread = None

    def _weights_text(self, config):
        return None if self.weights_of is None else json.dumps(self.weights_of(config), sort_keys=True)

    def _same_weights(self, metadata: dict, config) -> bool:
        stored = metadata.get("weights_sha256")
        return stored is None or self.weights_of is None or stored == self._weights_text(config)

    # ------------------------------------------------------------------------------------ cells
    def path(self, name: str) -> Path:
        return self.cells_dir / f"{name}.json"

    def load(self, name: str):
        """The stored record of cell `name`, or None (missing or unreadable: it will be recomputed)."""
        try:
            record = json.loads(self.path(name).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if record.get("format") == CELL_FORMAT else None

    def is_done(self, name: str, config, *, weights=None) -> bool:
        """Whether cell `name` is stored with this config and, for every model in `weights` ({tag: sha256}
        of the weights there now), computed from those same weights (cells stored before weights were
        recorded count as done)."""
        record = self.load(name)
        if record is None or record.get("config") != normalise(config):
            return False
        stored = record.get(WEIGHTS_KEY) or {}
        return all(stored.get(tag, sha) == sha for tag, sha in (weights or {}).items())

    def compute(self, name: str, config, fn, *, seed: int, weights=None, run=None):
        """The result of cell `name`: the stored one if its config (and the weights it was computed from)
        match, else `fn()` (a JSON-able dict), written atomically with its provenance.

        weights: a callable giving {model tag: sha256 of the checkpoint weights} the cell used, evaluated
        once `fn()` has run (a train cell creates its weights); recorded as the record's `weights_sha256`.
        run: {"dataset", "preset"} of the run, recorded so `report` can refuse cells of another run."""
        record = self.load(name)
        if record is not None and self.is_done(name, config, weights=weights() if weights else None):
            return record["result"]
        return self.recompute(name, config, fn, seed=seed, weights=weights, run=run)

    def recompute(self, name: str, config, fn, *, seed: int, weights=None, run=None, write: bool = True):
        """`fn()` recorded as cell `name` (as `compute`, without looking for a stored result). `write`:
        whether this process writes the record (under torchrun every rank runs a spread cell, one writes)."""
        started = time.perf_counter()
        result = normalise(fn())
        check_finite(result, name)
        record = {
            "format": CELL_FORMAT,
            "cell": name,
            "config": normalise(config),
            "seed": seed,
            "result": result,
            "provenance": {
                "rcedetect_version": __version__,
                "git_commit": git_commit(),
                "torch_version": torch.__version__,
                "device": describe_device(self.device),
                "rank": self.world.rank,
                "world_size": self.world.size,
                "wall_seconds": time.perf_counter() - started,
                "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }
        if weights is not None:
            record[WEIGHTS_KEY] = weights()
        if run is not None:
            record["run"] = normalise(run)
        if write:
            atomic_write_json(self.path(name), record)
        return result

    def records(self) -> dict:
        """All readable cell records of the run, by name."""
        out = {}
        for path in sorted(self.cells_dir.glob("*.json")):
            record = self.load(path.stem)
            if record is not None:
                out[path.stem] = record
        return out

    # ---------------------------------------------------------------------------------- tensors
    def tensor_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.safetensors"

    def load_tensors(self, key: str, config):
        """Cached tensors of `key` and their metadata if written for the same config, else None."""
        path = self.tensor_path(key)
        if not path.exists():
            return None
        try:
            tensors, metadata = read_tensors(path)
        except CheckpointError:
            return None  # a damaged cache file is recomputed, never trusted
        if metadata.get("config_hash") != config_hash(config) or not self._same_weights(metadata, config):
            return None
        return tensors, metadata

    def save_tensors(self, key: str, config, tensors: dict, **metadata) -> None:
        meta = {"config_hash": config_hash(config), "config": json.dumps(normalise(config), sort_keys=True)}
        if self.weights_of is not None:
            meta["weights_sha256"] = self._weights_text(config)
        meta.update({k: str(v) for k, v in metadata.items()})
        atomic_save_tensors(self.tensor_path(key), tensors, meta)

    def cached(self, key: str, config, fn) -> dict:
        """Tensors `fn()` (a dict of tensors) cached under `key` for `config`."""
        hit = self.load_tensors(key, config)
        if hit is not None:
            return hit[0]
        tensors = fn()
        self.save_tensors(key, config, tensors)
        return tensors

    def chunked(self, key: str, config, n: int, chunk: int, fn, *, on_chunk=None):
        """Run `fn(start, stop) -> dict of tensors (rows start:stop)` over `range(n)` in chunks of
        `chunk`, caching every chunk, and return (concatenated tensors, seconds).

        `seconds` is the compute time summed over the chunks (also those computed by an earlier,
        interrupted run, or by other ranks: each chunk stores its own), so per-example timings survive
        a resume. `on_chunk(done_rows, n)` is called after each chunk (progress display). With
        `spread` set, this rank computes only its share of the missing chunks (module docstring).
        """
        if self.spread is not None and self.spread.active:
            return self._chunked_spread(key, config, n, chunk, fn, on_chunk)
        hit = self.load_tensors(key, config)
        if hit is not None:
            tensors, metadata = hit
            if on_chunk is not None:
                on_chunk(n, n)
            return tensors, float(metadata.get("seconds", "0"))
        parts, seconds = [], 0.0
        for start, stop in _ranges(n, chunk):
            found = self._read_part(key, config, start, stop)
            part, took = found if found is not None else self._compute_part(key, config, start, stop, fn)
            seconds += took
            parts.append(part)
            if on_chunk is not None:
                on_chunk(stop, n)
        return self._join(key, config, parts, seconds), seconds

    def _chunked_spread(self, key, config, n, chunk, fn, on_chunk):
        world = self.spread
        ranges = _ranges(n, chunk)
        hit = self.load_tensors(key, config)
        found = [None] * len(ranges) if hit is not None else [self._read_part(key, config, *r) for r in ranges]
        # Consensus before anyone writes: every rank sees the same cache, and acts on the same flags.
        agreed = world.all_min([hit is not None] + [f is not None for f in found])
        if agreed[0]:
            if on_chunk is not None:
                on_chunk(n, n)
            return hit[0], float(hit[1].get("seconds", "0"))
        missing = [j for j, present in enumerate(agreed[1:]) if not present]
        done = sum(stop - start for j, (start, stop) in enumerate(ranges) if j not in missing)
        for j in missing[world.rank::world.size]:
            self._compute_part(key, config, *ranges[j], fn)
            done += ranges[j][1] - ranges[j][0]
            if on_chunk is not None:
                on_chunk(done, n)
        world.barrier()  # every chunk is on disk
        if world.is_main:
            parts, seconds = [], 0.0
            for start, stop in ranges:
                part = self._read_part(key, config, start, stop)
                if part is None:
                    raise RceDetectError(f"chunk {start}:{stop} of {self.tensor_path(key)} written by another "
                                         f"rank cannot be read here: every rank must share the run folder "
                                         f"(the same path on a shared file system)")
                parts.append(part[0])
                seconds += part[1]
            self._join(key, config, parts, seconds)
        world.barrier()  # the joined file is on disk
        hit = self.load_tensors(key, config)
        if hit is None:
            raise RceDetectError(f"{self.tensor_path(key)} written by rank 0 cannot be read on "
                                 f"{world.describe()}: every rank must share the run folder (the same path on a "
                                 f"shared file system)")
        if on_chunk is not None:
            on_chunk(n, n)
        return hit[0], float(hit[1].get("seconds", "0"))

    def _part_path(self, key: str, start: int, stop: int) -> Path:
        return self.cache_dir / f"{key}.parts" / f"{start:07d}-{stop:07d}.safetensors"

    def _read_part(self, key, config, start, stop):
        """(tensors, seconds) of a stored chunk computed for this config and these weights, else None."""
        path = self._part_path(key, start, stop)
        if not path.exists():
            return None
        try:
            part, metadata = read_tensors(path)
        except (CheckpointError, FileNotFoundError):
            return None  # damaged (recomputed, never trusted) or joined and removed meanwhile
        if metadata.get("config_hash") != config_hash(config) or not self._same_weights(metadata, config):
            return None
        return part, float(metadata.get("seconds", "0"))

    def _compute_part(self, key, config, start, stop, fn):
        t0 = time.perf_counter()
        part = {k: v.detach().cpu() for k, v in fn(start, stop).items()}
        took = time.perf_counter() - t0
        meta = {"config_hash": config_hash(config), "seconds": repr(took)}
        if self.weights_of is not None:
            meta["weights_sha256"] = self._weights_text(config)
        atomic_save_tensors(self._part_path(key, start, stop), part, meta)
        return part, took

    def _join(self, key, config, parts, seconds) -> dict:
        """The chunks concatenated, saved as the computation's cache entry; the chunk files removed."""
        tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        self.save_tensors(key, config, tensors, seconds=repr(seconds))
        parts_dir = self.cache_dir / f"{key}.parts"
        for path in parts_dir.glob("*.safetensors"):
            path.unlink(missing_ok=True)
        try:
            parts_dir.rmdir()
        except OSError:
            pass
        return tensors


def _ranges(n: int, chunk: int) -> list:
    return [(start, min(n, start + chunk)) for start in range(0, n, chunk)]


def _model_identities(config, found):
    """Collect {tag: training config} of every `"model": {...}` inside a cell config."""
    from .schema import model_tag

    if isinstance(config, dict):
        model = config.get("model")
        if isinstance(model, dict) and "depth" in model and "objective" in model:
            found.setdefault(model_tag(model["depth"], model["objective"]), []).append(model)
        for value in config.values():
            _model_identities(value, found)
    elif isinstance(config, list):
        for value in config:
            _model_identities(value, found)
    return found


def check_records(run_dir, info: dict, records: dict) -> None:
    """Refuse (one `InputError`) to render cells that do not belong together: cells of another dataset
    or preset than RUN/run.json, cells computed from different training settings of one model, or
    from different weights (sha256) of one model. Cells written before weights were recorded are
    accepted as they are (their runs cannot be checked)."""
    run_dir = Path(run_dir)
    dataset, preset = info.get("dataset"), info.get("preset")
    rerun = (f"re-run 'rcedetect reproduce --dataset {dataset} --preset {preset} --out {run_dir}' (it recomputes "
             f"stale cells) and render again")
    identities, weights = {}, {}
    for name, record in records.items():
        where = run_dir / "cells" / f"{name}.json"
        run = record.get("run") or {}
        cell_dataset = run.get("dataset", (record.get("config") or {}).get("dataset", dataset))
        if cell_dataset != dataset or run.get("preset", preset) != preset:
            raise InputError(f"{where} was computed by a {cell_dataset} / {run.get('preset', preset)} run, but "
                             f"{run_dir} is a {dataset} / {preset} run: move that cell out of {run_dir}/cells or "
                             f"{rerun}")
        for tag, models in _model_identities(record.get("config"), {}).items():
            for model in models:
                first = identities.setdefault(tag, (name, model))
                if first[1] != model:
                    changed = sorted(k for k in set(model) | set(first[1]) if model.get(k) != first[1].get(k))
                    raise InputError(f"cells {first[0]} and {name} were computed from differently trained "
                                     f"{tag} models (settings differ in {', '.join(changed)}): {rerun}")
        for tag, sha in (record.get(WEIGHTS_KEY) or {}).items():
            first = weights.setdefault(tag, (name, sha))
            if first[1] != sha:
                raise InputError(f"cells {first[0]} and {name} were computed from different weights of {tag} "
                                 f"(sha256 {first[1][:12]} vs {sha[:12]}): {rerun}")
