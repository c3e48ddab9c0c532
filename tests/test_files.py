"""rcedetect.files: the one atomic-write path (round trips, umask permissions, failures mid-write
leave the previous file intact and raise one OutputError) and file hashing."""

import errno
import hashlib
import json
import os

import pytest
import torch

from rcedetect import files
from rcedetect.errors import OutputError, RceDetectError
from rcedetect.files import (atomic_save_tensors, atomic_write_bytes, atomic_write_json, atomic_write_text, read_tensors,
                             sha256_bytes, sha256_file)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_round_trips(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")  # creates the folder
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "j.json").read_text()
    assert text == json.dumps({"b": 1, "a": [1, 2]}, indent=2, sort_keys=True) + "\n"
    tensors = {"x": torch.arange(6.0).view(2, 3).t(), "y": torch.tensor([1, 2])}  # non-contiguous is fine
    atomic_save_tensors(tmp_path / "t.safetensors", tensors, {"k": "v"})
    loaded, metadata = read_tensors(tmp_path / "t.safetensors")
    assert metadata == {"k": "v"} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    atomic_save_tensors(tmp_path / "n.safetensors", {"z": torch.zeros(1)})  # metadata optional
    assert _leftovers(tmp_path) == []


def test_hashes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    assert files.hash_file(tmp_path / "f", "md5") == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
        atomic_save_tensors(tmp_path / "t.safetensors", {"a": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("f", "t.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("failing", ["fsync", "write", "replace"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_failure_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, failing, code):
    target = tmp_path / "model.json"
    atomic_write_json(target, {"version": 1})
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if failing == "write":  # the file object's write, as a full disk reports it
        real_open = open

        class BrokenFile:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                broken()

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

        monkeypatch.setattr("builtins.open", lambda *a, **k: BrokenFile(real_open(*a, **k)))
    else:
        monkeypatch.setattr(files.os, failing, broken)
    with pytest.raises(OutputError) as info:
        atomic_write_json(target, {"version": 2})
    monkeypatch.undo()
    message = str(info.value)
    assert isinstance(info.value, RceDetectError) and "\n" not in message
    assert str(target) in message and os.strerror(code) in message and "free disk space" in message
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_tensor_write_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"
    atomic_save_tensors(target, {"a": torch.ones(3)})
    before = target.read_bytes()
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OutputError, match="w.safetensors"):
        atomic_save_tensors(target, {"a": torch.zeros(3)})
    monkeypatch.undo()
    assert target.read_bytes() == before and _leftovers(tmp_path) == []


def test_unwritable_folder_is_one_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="could not write"):
        atomic_write_text(blocker / "sub" / "x.txt", "x")


def test_old_import_paths_still_work():
    from rcedetect import checkpoints

    assert checkpoints.atomic_write_json is atomic_write_json and checkpoints.read_tensors is read_tensors
    assert checkpoints.atomic_save_tensors is atomic_save_tensors


def test_remove_stale_temps_deletes_only_the_temporary_files_of_killed_writers(tmp_path):
    (tmp_path / ".cell.json.ab12cd.tmp").write_text("half")
    (tmp_path / "cell.json").write_text("{}")
    (tmp_path / "notes.tmp").write_text("not ours: no leading dot")
    assert files.remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.json", "notes.tmp"]
    assert files.remove_stale_temps(tmp_path / "missing") == 0


_SAVE_IN_A_NEW_PROCESS = """
import sys, torch
from rcedetect.files import atomic_save_tensors
torch.manual_seed(0)
atomic_save_tensors(sys.argv[1], {f"w{i}": torch.randn(3, 4) for i in range(4)},
                    {"config": "{}", "step": "4", "train_seconds": "1.5", "rcedetect_version": "x", "seed": "0"})
"""


def test_saved_tensor_files_are_byte_identical_across_processes(tmp_path):
    """safetensors orders a file's metadata by a per-process hash (4 byte layouts in 6 processes were
    seen), which made equal checkpoints of two processes differ in sha256; the rewritten header does not."""
    import subprocess
    import sys

    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", _SAVE_IN_A_NEW_PROCESS, str(path)], check=True)
    assert len({files.sha256_file(p) for p in paths}) == 1
    tensors, metadata = read_tensors(paths[0])
    torch.manual_seed(0)
    assert all(torch.equal(tensors[f"w{i}"], torch.randn(3, 4)) for i in range(4))
    assert metadata["step"] == "4"


def test_canonical_safetensors_sorts_the_header_and_keeps_the_data():
    body = torch.arange(6, dtype=torch.float32).numpy().tobytes()
    header = {"__metadata__": {"b": "2", "a": "1"}, "t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    shuffled = {"t": header["t"], "__metadata__": {"a": "1", "b": "2"}}

    def raw(h):
        text = json.dumps(h).encode()
        return len(text).to_bytes(8, "little") + text + body

    one, two = files.canonical_safetensors(raw(header)), files.canonical_safetensors(raw(shuffled))
    assert one == two and one.endswith(body)
    size = int.from_bytes(one[:8], "little")
    assert size % 8 == 0 and json.loads(one[8:8 + size]) == header
    from safetensors.torch import load

    assert torch.equal(load(one)["t"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
