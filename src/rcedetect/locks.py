"""One writer per folder: an advisory lock (`fcntl.flock`) on RUN/ and on each checkpoint folder.

    with FolderLock(run_dir, "reproduce"):     # a second writer gets LockedError naming our PID
        ...

Who takes it: `rcedetect reproduce` / `demo` (the run folder), `rcedetect train` and a reproduction's
training (the checkpoint folder), and fitting a detector beside a checkpoint (the checkpoint folder,
only when it has to write). Readers never take it and never wait: `rcedetect report`, `reproduce
--list`, `detect` with saved detectors, `eval` (all writes are atomic renames, so a reader sees the old
file or the new one, never half of one).

The lock file `<folder>/.rcedetect.lock` holds the holder's PID, command and start time (what the
refusal prints). The kernel releases a flock when its process exits, even on SIGKILL, so a lock never
outlives its holder; the file is removed on release (and re-checked after locking, so that removal
cannot let two processes hold it). Within one process the lock is re-entrant (a reproduction that
trains its models takes the checkpoint folders' locks under the run folder's).
"""

import errno
import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path

from .errors import RceDetectError

LOCK_FILE = ".rcedetect.lock"


class LockedError(RceDetectError):
    """Another process writes the folder (its PID is in the message)."""


_held = {}  # resolved folder -> [fd, depth] of the locks this process holds
_guard = threading.Lock()


def holder(folder) -> dict:
    """What the lock file of `folder` says about its holder ({} when none is recorded)."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if info.get("started") else "?"
    return f"PID {info['pid']} ({info.get('what', 'rcedetect')}, since {since})"


class FolderLock:
    """Exclusive, non-blocking lock of `folder` (created if missing; removed again on release when this
    lock created it and it is still empty). `what` names the holder's job in a refusal."""

    def __init__(self, folder, what: str = "rcedetect"):
        self.folder = Path(folder)
        self.what = what
        self._key = None
        self._created = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def acquire(self) -> None:
        if not self.folder.exists():
            from .files import ensure_folder

            ensure_folder(self.folder)
            self._created = True
        key = str(self.folder.resolve())
        with _guard:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return
            fd = self._lock_fd()
            _held[key] = [fd, 1]
            self._key = key

    def _lock_fd(self) -> int:
        path = self.folder / LOCK_FILE
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                from .errors import OutputError

                raise OutputError(f"cannot create the lock file {path} ({exc.strerror}): make {self.folder} "
                                  f"writable or choose another folder") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockedError(f"{self.folder} is being written by {_describe(holder(self.folder))}: wait "
                                      f"for it to finish or stop it, or use another folder (readers such as "
                                      f"'rcedetect report' need no lock)") from None
                return -1  # the file system has no flock (some network mounts): proceed unlocked
            try:  # the path may have been unlinked by a releasing holder between open and flock: retry
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError
            except FileNotFoundError:
                os.close(fd)
                continue
            record = json.dumps({"pid": os.getpid(), "what": self.what, "started": time.time(),
                                 "argv": sys.argv[1:][:20]})
            os.ftruncate(fd, 0)
            os.pwrite(fd, (record + "\n").encode(), 0)
            return fd
        raise LockedError(f"{self.folder}: could not take its lock file {path}: run again")

    def release(self) -> None:
        if self._key is None:
            return
        with _guard:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self._key]
                fd = entry[0]
                if fd >= 0:
                    try:
                        (self.folder / LOCK_FILE).unlink()
                    except OSError:
                        pass
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
        self._key = None
        if self._created:
            try:
                self.folder.rmdir()  # only succeeds when nothing was written
            except OSError:
                pass


def is_locked(folder) -> bool:
    """Whether some process (this one included) holds the lock of `folder` right now."""
    folder = Path(folder)
    if str(folder.resolve()) in _held:
        return True
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


__all__ = ["FolderLock", "LockedError", "LOCK_FILE", "holder", "is_locked"]
