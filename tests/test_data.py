"""Dataset loading, md5 verification and batch-wise augmentation."""

import shutil

import pytest
import torch

from rcedetect.augment import cifar_augment
from rcedetect.cli import main
from rcedetect.data import MNIST_MD5, load_dataset
from rcedetect.errors import DataError


def test_mnist_shapes_and_dtypes(mnist_test):
    assert mnist_test.images.shape == (10_000, 1, 28, 28) and mnist_test.images.dtype == torch.uint8
    assert mnist_test.labels.shape == (10_000,) and set(mnist_test.labels.tolist()) == set(range(10))
    x = mnist_test.float_images(slice(0, 5))
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_cifar10_test_split(data_dir):
    test = load_dataset("cifar10", "test", data_dir)
    assert test.images.shape == (10_000, 3, 32, 32)
    # the first CIFAR-10 test image is a cat (class 3), the second a ship (8)
    assert test.labels[:2].tolist() == [3, 8]


@pytest.fixture()
def mnist_copy(tmp_path, data_dir):
    shutil.copytree(data_dir / "mnist", tmp_path / "mnist")
    for f in (tmp_path / "mnist").iterdir():
        f.chmod(0o644)
    return tmp_path


def test_tampered_file_is_a_clear_error(mnist_copy):
    target = mnist_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", mnist_copy, download=False)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and MNIST_MD5["t10k-labels-idx1-ubyte.gz"] in message
    assert "delete it" in message


def test_truncated_file_via_cli_is_one_line(mnist_copy, capsys):
    target = mnist_copy / "mnist" / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:1000])
    code = main(["train", "--dataset", "mnist", "--objective", "ce", "--steps", "1", "--depth", "8",
                 "--data-dir", str(mnist_copy), "--out", str(mnist_copy / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error:") and "train-images-idx3-ubyte.gz" in err and MNIST_MD5["train-images-idx3-ubyte.gz"] in err
    assert not (mnist_copy / "run" / "model.safetensors").exists()


def test_missing_file_without_download(tmp_path):
    with pytest.raises(DataError, match="missing .*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", "train", tmp_path, download=False)


def test_cifar_augment_is_a_crop_of_the_resized_image_and_flips():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = cifar_augment(x, g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    big = torch.nn.functional.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)
    flipped = 0
    for i in range(64):  # brute force: each output must equal one of the 81 crops, maybe flipped
        crops = big[i].unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
        plain = (crops - out[i]).abs().amax((1, 2, 3)).min()
        mirrored = (crops.flip(3) - out[i]).abs().amax((1, 2, 3)).min()
        assert min(plain, mirrored) < 1e-6
        flipped += int(mirrored < plain)
    assert 16 < flipped < 48  # about half are flipped
    again = cifar_augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_registry_is_keyed_by_the_dataset_enum():
    from rcedetect.data import DATASETS, load_dataset
    from rcedetect.errors import InputError
    from rcedetect.names import Dataset

    assert list(DATASETS) == list(Dataset) and DATASETS["mnist"] is DATASETS[Dataset.MNIST]
    assert all(info.name is key for key, info in DATASETS.items())
    with pytest.raises(InputError, match="unknown dataset 'svhn': choose one of mnist, cifar10"):
        load_dataset("svhn", "test")
