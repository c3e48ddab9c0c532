"""A resumable store of result cells: one JSON file per cell, tensors cached as safetensors.

    RUN/cells/<name>.json       {"cell", "config", "seed", "result", "provenance"}
    RUN/cache/<key>.safetensors tensors a cell computed (adversarial examples, features), reused by
                                later cells and by a resumed run
    RUN/cache/<key>.parts/      chunks of a long computation still in progress

A cell whose JSON exists with the same config (compared as JSON) is skipped; one with another config
is recomputed. Every file is written to a temporary name and renamed (atomic on POSIX), so a run
killed at any moment leaves complete files or none: rerunning continues where it stopped, and a
chunked computation (`chunked`) continues at its first missing chunk.

Provenance (per cell): package version, git commit (when the package runs from a git checkout),
torch version, device, wall time and the UTC time it finished.
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
from ..errors import CheckpointError, RceDetectError

CELL_FORMAT = "rcedetect-cell-v1"


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

    def __init__(self, run_dir, *, device="cpu"):
        self.run_dir = Path(run_dir)
        self.cells_dir = self.run_dir / "cells"
        self.cache_dir = self.run_dir / "cache"
        self.device = device

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

    def is_done(self, name: str, config) -> bool:
        record = self.load(name)
        return record is not None and record.get("config") == normalise(config)

    def compute(self, name: str, config, fn, *, seed: int):
        """The result of cell `name`: the stored one if its config matches, else `fn()` (a JSON-able
        dict), written atomically with its provenance."""
        record = self.load(name)
        if record is not None and record.get("config") == normalise(config):
            return record["result"]
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
                "wall_seconds": time.perf_counter() - started,
                "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }
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
        if metadata.get("config_hash") != config_hash(config):
            return None
        return tensors, metadata

    def save_tensors(self, key: str, config, tensors: dict, **metadata) -> None:
        meta = {"config_hash": config_hash(config), "config": json.dumps(normalise(config), sort_keys=True)}
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
        interrupted run: each chunk stores its own), so per-example timings survive a resume.
        `on_chunk(done_rows, n)` is called after each chunk (progress display).
        """
        hit = self.load_tensors(key, config)
        if hit is not None:
            tensors, metadata = hit
            if on_chunk is not None:
                on_chunk(n, n)
            return tensors, float(metadata.get("seconds", "0"))
        parts_dir = self.cache_dir / f"{key}.parts"
        digest = config_hash(config)
        parts, seconds = [], 0.0
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            part_path = parts_dir / f"{start:07d}-{stop:07d}.safetensors"
            part = None
            if part_path.exists():
                try:
                    part, metadata = read_tensors(part_path)
                    if metadata.get("config_hash") != digest:
                        part = None
                    else:
                        seconds += float(metadata.get("seconds", "0"))
                except CheckpointError:
                    part = None
            if part is None:
                t0 = time.perf_counter()
                part = {k: v.detach().cpu() for k, v in fn(start, stop).items()}
                took = time.perf_counter() - t0
                seconds += took
                atomic_save_tensors(part_path, part, {"config_hash": digest, "seconds": repr(took)})
            parts.append(part)
            if on_chunk is not None:
                on_chunk(stop, n)
        tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        self.save_tensors(key, config, tensors, seconds=repr(seconds))
        for path in parts_dir.glob("*.safetensors"):
            path.unlink(missing_ok=True)
        try:
            parts_dir.rmdir()
        except OSError:
            pass
        return tensors, seconds
