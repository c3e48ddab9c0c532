"""The one way rcedetect writes and fingerprints files: atomic writes and sha256.

Every write goes to a temp file in the target's folder, is flushed and fsync'ed, renamed over the
target (atomic on POSIX) and the folder is fsync'ed so the rename itself survives a crash. A reader
therefore sees either the previous file or the complete new one, never a mix. New files get the
permissions the umask gives (0o666 & ~umask), as `open()` would, not mkstemp's 0600: checkpoints
and reports are meant to be shared. Any OSError while writing (disk full, I/O error, read-only
folder) removes the temp file, leaves the previous file intact and raises a one-line `OutputError`.
"""

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError, OutputError

_HASH_BLOCK = 1 << 22


def _umask() -> int:
    # os.umask can only be read by setting it; the race with other threads is harmless here (we put
    # the same value back immediately).
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems / platforms cannot open folders: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_target(path):
    """Yield the path of a temp file beside `path`; once the block has written it completely it is
    fsync'ed, given the umask's permissions and renamed over `path`. On any error the temp file is
    removed and `path` is left as it was; OSErrors become one `OutputError` naming the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as exc:
        raise OutputError(f"could not write {path} ({exc.strerror or exc}): free disk space or fix the folder's "
                          f"permissions and run again (the previous file, if any, is unchanged)") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def ensure_folder(folder) -> Path:
    """Create `folder` (and its parents) if missing; an OSError becomes one `OutputError`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"could not create the folder {folder} ({exc.strerror or exc}): choose a writable "
                          f"location (no regular file on the path) and run again") from exc
    return folder


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename, fsync of the folder)."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    """Write `obj` as JSON (indent 2, sorted keys, trailing newline) to `path` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path, tensors: dict, metadata=None) -> None:
    """Save `tensors` (moved to CPU, made contiguous) with string `metadata` as a safetensors file, atomically.

    The bytes are a function of the tensors and metadata alone: safetensors writes its metadata in a
    per-process hash order, so equal checkpoints from two processes had different sha256 (and a
    resumed training seemed to differ from an uninterrupted one); the header is rewritten with sorted keys.
    """
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(canonical_safetensors(data))


def canonical_safetensors(data: bytes) -> bytes:
    """`data` (a safetensors file) with its JSON header's keys sorted, padded with spaces to 8 bytes as
    the format asks; the tensor bytes and their offsets (relative to the data) are unchanged."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def read_tensors(path):
    """(tensors dict, metadata dict) of a safetensors file; any parse error becomes a CheckpointError."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): re-run training to recreate it") from exc


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def hash_file(path, algorithm: str = "sha256") -> str:
    """Hex digest of the file at `path` with a `hashlib` algorithm, read in blocks (constant memory)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path) -> str:
    """Hex sha256 of the file at `path`."""
    return hash_file(path, "sha256")


__all__ = ["atomic_target", "remove_stale_temps", "ensure_folder", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_tensors", "read_tensors",
           "hash_file", "sha256_bytes", "sha256_file"]


def remove_stale_temps(folder) -> int:
    """Delete the temporary files `atomic_target` leaves behind when its process is killed mid-write
    (`.<name>.<random>.tmp` in `folder`); returns how many. Only call it while holding the folder's
    writer lock (`rcedetect.locks`): then no other process can be writing one of them."""
    folder = Path(folder)
    removed = 0
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
