from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from neurohw.config import DataConfig
from neurohw.data import (
    CHECKOUT_DATA, DATASETS, Preprocess, augment, draw_augment, load_raw, load_splits, make_splits, resolve_data_dir,
)
from neurohw.errors import DataError

MNIST_GZ = CHECKOUT_DATA / "mnist"


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEUROHW_DATA", raising=False)
    assert resolve_data_dir() == CHECKOUT_DATA  # no ./data here
    (tmp_path / "data").mkdir()
    assert resolve_data_dir() == Path("data")
    monkeypatch.setenv("NEUROHW_DATA", "/env/dir")
    assert resolve_data_dir() == Path("/env/dir")
    assert resolve_data_dir("/explicit") == Path("/explicit")


def test_real_mnist_counts(mnist_small):
    """The committed files are the real MNIST (label counts of data/mnist/README.md)."""
    x_train, y_train, x_test, y_test = load_raw("mnist")
    assert x_train.shape == (60000, 1, 28, 28) and x_train.dtype == torch.uint8
    assert torch.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_validation_is_held_out_of_training_and_deterministic():
    raw = tuple(t[:300] for t in load_raw("mnist"))
    a = make_splits(DATASETS["mnist"], raw, val_size=50, split_seed=1)
    b = make_splits(DATASETS["mnist"], raw, val_size=50, split_seed=1)
    c = make_splits(DATASETS["mnist"], raw, val_size=50, split_seed=2)
    assert len(a.train) == 250 and len(a.val) == 50 and len(a.test) == 300
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    train_rows = {bytes(r.numpy()) for r in a.train.images.flatten(1)}
    assert not any(bytes(r.numpy()) in train_rows for r in a.val.images.flatten(1))
    assert torch.equal(a.test.images, raw[2])  # the test set is never touched
    with pytest.raises(DataError, match="val_size"):
        make_splits(DATASETS["mnist"], raw, val_size=300, split_seed=0)


def test_missing_dataset_names_every_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROHW_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_raw("mnist", tmp_path)
    msg = str(e.value)
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", str(tmp_path / "mnist")):
        assert name in msg
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_raw("cifar10", tmp_path)
    with pytest.raises(DataError, match="fashion_mnist"):
        load_raw("fashion_mnist", tmp_path)


def test_corrupt_gzip_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROHW_OFFLINE", "1")
    (tmp_path / "mnist").mkdir()
    for f in MNIST_GZ.glob("*.gz"):
        shutil.copy(f, tmp_path / "mnist" / f.name)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_raw("mnist", tmp_path)
    assert not list((tmp_path / "MNIST" / "raw").glob("*.part"))  # nothing half-written left


def test_read_only_data_dir_unpacks_into_a_cache(tmp_path, monkeypatch):
    import neurohw.data as data

    ro = tmp_path / "ro"
    (ro / "mnist").mkdir(parents=True)
    for f in MNIST_GZ.glob("*.gz"):
        shutil.copy(f, ro / "mnist" / f.name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = data._writable
    monkeypatch.setattr(data, "_writable", lambda p: False if Path(p) == ro else real(p))  # root ignores chmod
    x_train, *_ = load_raw("mnist", ro)
    assert x_train.shape[0] == 60000
    assert (tmp_path / "cache" / "neurohw" / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    assert not (ro / "MNIST").exists()


def test_fashion_mnist_reads_the_same_layout(tmp_path, monkeypatch):
    """Fashion-MNIST uses the IDX format too; a folder of such files is read through torchvision."""
    monkeypatch.setenv("NEUROHW_OFFLINE", "1")
    (tmp_path / "fashion_mnist").mkdir()
    for f in MNIST_GZ.glob("*.gz"):  # stand-in files with the right names and format
        shutil.copy(f, tmp_path / "fashion_mnist" / f.name)
    x_train, y_train, x_test, y_test = load_raw("fashion_mnist", tmp_path)
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)


def test_preprocess_normalises_per_channel_and_flattens_in_c_order():
    info = DATASETS["cifar10"]
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = Preprocess(info, (3 * 32 * 32,), torch.device("cpu"), torch.float64)(images)
    c, i, j = 2, 5, 7
    want = (images[1, c, i, j].double() / 255 - info.mean[c]) / info.std[c]
    assert torch.isclose(x[1, c * 1024 + i * 32 + j], want)


def test_augment_equals_a_naive_crop_and_flip():
    x = torch.rand(5, 3, 6, 7, dtype=torch.float64)
    draw = draw_augment(5, 2, torch.Generator().manual_seed(0))
    out = augment(x, 2, draw)
    for b in range(5):
        img = x[b].flip(2) if draw.flip[b] else x[b]
        padded = torch.nn.functional.pad(img[None], (2, 2, 2, 2), mode="replicate")[0]
        t, l = int(draw.top[b]), int(draw.left[b])
        assert torch.equal(out[b], padded[:, t : t + 6, l : l + 7])


def test_load_splits_uses_the_config():
    s = load_splits(DataConfig(val_size=100, limit_train=64, limit_eval=32))
    assert (len(s.train), len(s.val), len(s.test)) == (64, 32, 32)
    with pytest.raises(DataError, match="channels"):
        load_splits(DataConfig(mean=(0.1, 0.2), std=(1.0, 1.0)))
