"""MNIST and CIFAR-10 loaders: canonical files, md5-verified, held as uint8 tensors in memory.

Data directory (first match wins):
  1. the `data_dir` argument / CLI `--data-dir`,
  2. the environment variable `RCEDETECT_DATA_DIR`,
  3. `~/.cache/rcedetect/data`.

Layout inside it (the same as `shared/data` used by the tests and CI):
  mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin

Missing files are downloaded from the canonical sources and every file is checked against its
md5 before use. A truncated or tampered file raises `DataError` naming the file, the expected
md5 and the fix; nothing is ever trained on data that failed the check.
"""

import gzip
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, RceDetectError
from .files import atomic_target, hash_file
from .names import Dataset

ENV_DATA_DIR = "RCEDETECT_DATA_DIR"

MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_TAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}


@dataclass(frozen=True)
class DatasetInfo:
    name: Dataset
    in_channels: int
    image_size: int
    num_classes: int


DATASETS = {
    Dataset.MNIST: DatasetInfo(Dataset.MNIST, in_channels=1, image_size=28, num_classes=10),
    Dataset.CIFAR10: DatasetInfo(Dataset.CIFAR10, in_channels=3, image_size=32, num_classes=10),
}
SPLITS = ("train", "test")
# Images per split (the canonical files; checked when they are read): what counts are validated against
# before any data is loaded.
SPLIT_SIZES = {Dataset.MNIST: {"train": 60_000, "test": 10_000}, Dataset.CIFAR10: {"train": 50_000, "test": 10_000}}


def split_size(name, split: str) -> int:
    """Number of images of `split` of dataset `name`, without loading it."""
    return SPLIT_SIZES[Dataset.coerce(name, "dataset")][split]


@dataclass(frozen=True)
class ImageDataset:
    """A whole split in memory: `images` uint8 (N, C, H, W), `labels` int64 (N,)."""

    info: DatasetInfo
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def float_images(self, index=None) -> torch.Tensor:
        """Images as float32 in [0, 1] (the public pixel range), optionally only rows `index`."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rcedetect" / "data"


def md5sum(path: Path) -> str:
    return hash_file(path, "md5")


def verify_md5(path: Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise DataError(
            f"{path} is corrupted or tampered with (md5 {actual}, expected {expected}): "
            f"delete it and run again to re-download, or restore the original file"
        )


def _download(urls, filename: str, destination: Path, expected_md5: str) -> None:
    """Download into a temp file beside `destination`, verify its md5, then rename it into place
    (`files.atomic_target`: a failed or interrupted download leaves nothing behind)."""
    from tqdm.auto import tqdm

    errors = []
    for base in urls:
        url = base + filename if base.endswith("/") else base
        try:
            with atomic_target(destination) as tmp:
                try:
                    with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                        total = int(response.headers.get("Content-Length") or 0) or None
                        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {filename}") as bar:
                            while block := response.read(1 << 20):
                                out.write(block)
                                bar.update(len(block))
                except OSError as exc:  # network errors are OSErrors too: not a write failure
                    raise DataError(f"{url}: {exc}") from exc
                actual = md5sum(Path(tmp))
                if actual != expected_md5:
                    raise DataError(f"downloaded {url} has md5 {actual}, expected {expected_md5}")
            return
        except RceDetectError as exc:
            errors.append(str(exc))
    raise DataError(
        f"could not download {filename} ({'; '.join(errors)}): place the file at {destination} "
        f"by hand or point --data-dir / ${ENV_DATA_DIR} at a folder that has it"
    )


def _ensure_mnist(root: Path, download: bool) -> Path:
    folder = root / Dataset.MNIST.value
    for filename, md5 in MNIST_MD5.items():
        path = folder / filename
        if not path.exists():
            if not download:
                raise DataError(f"missing {path}: run with downloads enabled or set --data-dir / ${ENV_DATA_DIR}")
            _download(MNIST_URLS, filename, path, md5)
        verify_md5(path, md5)
    return folder


def _ensure_cifar10(root: Path, download: bool) -> Path:
    folder = root / Dataset.CIFAR10.value / CIFAR10_DIR
    missing = [name for name in CIFAR10_MD5 if not (folder / name).exists()]
    if missing:
        if not download:
            raise DataError(f"missing {folder / missing[0]}: run with downloads enabled or set --data-dir / ${ENV_DATA_DIR}")
        archive = root / Dataset.CIFAR10.value / "cifar-10-binary.tar.gz"
        if not archive.exists():
            _download((CIFAR10_URL,), archive.name, archive, CIFAR10_TAR_MD5)
        verify_md5(archive, CIFAR10_TAR_MD5)
        # Extract into a temporary folder first so an interrupted extraction leaves nothing half-written.
        with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name in CIFAR10_MD5]
                for member in members:
                    member.name = Path(member.name).name  # flatten: never trust paths inside archives
                    tar.extract(member, tmp, filter="data")
            folder.mkdir(parents=True, exist_ok=True)
            for name in CIFAR10_MD5:
                shutil.move(os.path.join(tmp, name), folder / name)
    for name, md5 in CIFAR10_MD5.items():
        verify_md5(folder / name, md5)
    return folder


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[2] != 0x08 or raw[3] != expected_dims:
        raise DataError(f"{path} is not an idx file with {expected_dims} dimensions: delete it and run again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * expected_dims)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} values): delete it and run again")
    return data.reshape(shape)


def _load_mnist(folder: Path, split: str):
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 3)[:, None, :, :]
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 1)
    return images, labels


def _load_cifar10(folder: Path, split: str):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    records = np.concatenate([np.fromfile(folder / name, dtype=np.uint8).reshape(-1, 3073) for name in names])
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]


_READERS = {Dataset.MNIST: (_ensure_mnist, _load_mnist), Dataset.CIFAR10: (_ensure_cifar10, _load_cifar10)}


@lru_cache(maxsize=8)
def _load_cached(name: str, split: str, root: str, download: bool) -> ImageDataset:
    ensure, read = _READERS[name]
    images, labels = read(ensure(Path(root), download), split)
    return ImageDataset(
        info=DATASETS[name],
        split=split,
        images=torch.from_numpy(np.array(images, copy=True)),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )


def load_dataset(name: str, split: str, data_dir=None, download: bool = True) -> ImageDataset:
    """Load `name` ('mnist' | 'cifar10') split ('train' | 'test') as uint8 tensors, verified by md5."""
    name = Dataset.coerce(name, "dataset")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose 'train' or 'test'")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return _load_cached(name, split, str(root.resolve()), download)
