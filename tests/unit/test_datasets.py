"""Every dataset format against files the tests write in that format (issue 18): your own arrays (.npz,
HDF5) and image folders, CIFAR-100's pickles, SVHN's MATLAB 5 .mat files, ImageNet32's npz batches;
a corrupted file of each format is one DataError line naming the file and the array; real MNIST
digits given as arrays train exactly as the built-in mnist; a tiny folder dataset trains."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from neurohw.cli import main
from neurohw.config import DataConfig, load_config
from neurohw.data import (
    DATASETS, Preprocess, check_fingerprint, check_net, dataset_fingerprint, load_raw, load_splits, split_indices,
)
from neurohw.datasets.matlab import read_mat
from neurohw.errors import ConfigError, DataError

MODELS = Path(__file__).resolve().parents[2] / "models"


def one_line(err: pytest.ExceptionInfo, *words: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def images(n: int, shape: tuple[int, ...], seed: int, dtype=np.uint8) -> np.ndarray:
    g = np.random.default_rng(seed)
    if dtype == np.uint8:
        return g.integers(0, 256, (n, *shape), dtype=np.uint8)
    return g.standard_normal((n, *shape)).astype(dtype)


def labels(n: int, k: int, seed: int) -> np.ndarray:
    y = np.random.default_rng(seed + 100).integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    return y


def arrays_cfg(path, **kw) -> DataConfig:
    return DataConfig(dataset="arrays", path=str(path), **{"val_size": 4, **kw})


# ------------------------------------------------------------------------------------ arrays
def test_npz_of_uint8_images_infers_shape_classes_and_normalises_on_the_training_split(tmp_path):
    x_train, y_train = images(30, (5, 7), 0), labels(30, 4, 0)
    x_test, y_test = images(8, (5, 7), 1), labels(8, 4, 1)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    s = load_splits(arrays_cfg("d.npz", val_size=6), tmp_path)  # relative: resolved against the data directory
    info = s.info
    assert info.input_shape == (1, 5, 7) and info.n_classes == 4 and info.scale == 255.0 and not info.flat
    assert info.path == str((tmp_path / "d.npz").resolve())
    assert info.sha256 == hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest() and info.n_files == 1
    train_idx, val_idx = split_indices(30, 6, 0, "arrays")
    assert torch.equal(s.train.images, torch.from_numpy(x_train[train_idx.numpy()][:, None]))
    assert torch.equal(s.val.labels, torch.from_numpy(y_train[val_idx.numpy()]))
    assert torch.equal(s.test.images[:, 0], torch.from_numpy(x_test)) and s.train.images.dtype == torch.uint8
    pixels = x_train[train_idx.numpy()].astype(np.float64) / 255  # the training split only, not validation
    assert info.normalisation == "training split"
    assert info.mean == pytest.approx((pixels.mean(),), rel=1e-12) and info.std == pytest.approx((pixels.std(),), rel=1e-12)
    all_pixels = x_train.astype(np.float64) / 255
    assert abs(info.mean[0] - all_pixels.mean()) > 1e-6  # ... which differs from the statistics of train + validation


def test_hdf5_of_float_images_keeps_their_values_and_dtype(tmp_path):
    x_train, x_test = images(20, (3, 4, 4), 2, np.float32), images(6, (3, 4, 4), 3, np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x_train"], f["y_train"], f["x_test"], f["y_test"] = x_train, labels(20, 3, 2), x_test, labels(6, 3, 3)
    s = load_splits(arrays_cfg(tmp_path / "d.h5", mean=(0.5, -1.0, 2.0), std=(2.0, 4.0, 0.5)))
    info = s.info
    assert info.input_shape == (3, 4, 4) and info.n_classes == 3 and info.scale == 1.0 and info.normalisation == "config"
    assert s.test.images.dtype == torch.float32 and torch.equal(s.test.images, torch.from_numpy(x_test))
    x = Preprocess(info, (48,), torch.device("cpu"), torch.float64)(s.test.images)
    want = (x_test.astype(np.float64) - np.array([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1)) / np.array([2.0, 4.0, 0.5]).reshape(1, 3, 1, 1)
    assert torch.equal(x, torch.from_numpy(want.reshape(6, 48)))  # float values taken as they are: no /255


def test_flat_vectors_are_1x1xD_for_dense_nets_only(tmp_path):
    np.savez(tmp_path / "v.npz", x_train=images(20, (9,), 4, np.float64), y_train=labels(20, 2, 4),
             x_test=images(5, (9,), 5, np.float64), y_test=labels(5, 2, 5))
    s = load_splits(arrays_cfg(tmp_path / "v.npz"))
    assert s.info.flat and s.info.input_shape == (1, 1, 9) and s.train.images.dtype == torch.float64
    check_net(s.info, load_config(None, []).net)  # fc: fine
    conv = load_config(MODELS / "mnist_ep_conv.toml").net
    with pytest.raises(ConfigError) as e:
        check_net(s.info, conv)
    one_line(e, str(tmp_path / "v.npz"), "vectors", "net.architecture = 'conv'")
    with pytest.raises(DataError) as e:
        load_splits(arrays_cfg(tmp_path / "v.npz", augment=True))
    one_line(e, "v.npz", "data.augment")


def test_relative_path_resolves_against_the_data_directory_then_the_working_directory(tmp_path, monkeypatch):
    arrays = dict(x_train=images(10, (2, 2), 6), y_train=labels(10, 2, 6), x_test=images(3, (2, 2), 7), y_test=labels(3, 2, 7))
    (tmp_path / "dd").mkdir()
    (tmp_path / "cwd").mkdir()
    np.savez(tmp_path / "cwd" / "d.npz", **arrays)
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_splits(arrays_cfg("d.npz"), tmp_path / "dd").info.path == str(tmp_path / "cwd" / "d.npz")
    np.savez(tmp_path / "dd" / "d.npz", **arrays)
    assert load_splits(arrays_cfg("d.npz"), tmp_path / "dd").info.path == str(tmp_path / "dd" / "d.npz")
    with pytest.raises(DataError) as e:
        load_splits(arrays_cfg("missing.npz"), tmp_path / "dd")
    one_line(e, str(tmp_path / "dd" / "missing.npz"), str(tmp_path / "cwd" / "missing.npz"))


GOOD = dict(x_train=images(12, (3, 3), 8), y_train=labels(12, 3, 8), x_test=images(4, (3, 3), 9), y_test=labels(4, 3, 9))


@pytest.mark.parametrize(
    "change, array, words",
    [
        (dict(x_test=None), "x_test", ["no array", "x_train, y_train, x_test, y_test"]),
        (dict(y_train=np.arange(11) % 3), "y_train", ["11 labels", "12 samples"]),
        (dict(y_test=np.array([0, 1, 2, 3])), "y_test", ["label 3", "0 … 2", "y_train's classes"]),
        (dict(y_train=np.r_[-1, GOOD["y_train"][1:]]), "y_train", ["label -1"]),
        (dict(x_train=np.where(np.arange(12)[:, None, None] == 5, np.nan, 0.5) * np.ones((12, 3, 3))), "x_train", ["sample 5", "NaN"]),
        (dict(x_train=GOOD["x_train"].astype(np.int32)), "x_train", ["dtype int32", "uint8"]),
        (dict(y_train=GOOD["y_train"].astype(np.float32)), "y_train", ["dtype float32", "integers"]),
        (dict(x_test=images(4, (3, 4), 9)), "x_test", ["(3, 4)", "(3, 3)"]),
        (dict(x_train=images(12, (1, 1, 3, 3), 8)), "x_train", ["shape (12, 1, 1, 3, 3)"]),
    ],
)
def test_bad_arrays_are_one_line_naming_the_file_and_the_array(tmp_path, change, array, words):
    arrays = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    for kind in ("npz", "h5"):
        path = tmp_path / f"bad.{kind}"
        if kind == "npz":
            np.savez(path, **arrays)
        else:
            with h5py.File(path, "w") as f:
                for k, v in arrays.items():
                    f[k] = v
        with pytest.raises(DataError) as e:
            load_splits(arrays_cfg(path))
        one_line(e, str(path), f"'{array}'", *words)


def test_corrupted_npz_and_hdf5_name_the_file_and_the_array(tmp_path):
    npz = tmp_path / "c.npz"
    np.savez(npz, **GOOD)  # stored, not compressed: x_test's bytes lie in the file as they are
    raw = bytearray(npz.read_bytes())
    at = raw.index(GOOD["x_test"].tobytes())
    raw[at + 3] ^= 0xFF  # one byte of x_test's data: the zip member's CRC no longer matches
    npz.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_splits(arrays_cfg(npz))
    one_line(e, str(npz), "'x_test'", "unreadable")

    h5 = tmp_path / "c.h5"
    with h5py.File(h5, "w") as f:
        for k, v in GOOD.items():
            f.create_dataset(k, data=v, chunks=v.shape, compression="gzip")
        offset, size = f["y_train"].id.get_chunk_info(0).byte_offset, f["y_train"].id.get_chunk_info(0).size
    raw = bytearray(h5.read_bytes())
    raw[offset : offset + size] = b"\x00" * size  # y_train's compressed chunk destroyed
    h5.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_splits(arrays_cfg(h5))
    one_line(e, str(h5), "'y_train'", "unreadable")

    junk = tmp_path / "j.npz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(DataError) as e:
        load_splits(arrays_cfg(junk))
    one_line(e, str(junk), "neither an .npz")


# ------------------------------------------------------------------------------------ folder
def write_folder(root: Path, spec: dict[str, dict[str, int]], size=(6, 5), mode="L", seed=0) -> dict[str, list[np.ndarray]]:
    """PNGs root/<split>/<class>/<i>.png of random pixels; returns the arrays written, per split."""
    g = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for split, classes in spec.items():
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = g.integers(0, 256, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
                Image.fromarray(a, mode).save(root / split / c / f"{i:03d}.png")
                out.setdefault(split, []).append(a)
    return out


def test_folder_reads_imagefolder_layout_in_sorted_order(tmp_path):
    written = write_folder(tmp_path / "f", {"train": {"cat": 3, "ant": 2, "dog": 4}, "test": {"dog": 1, "ant": 2}})
    (tmp_path / "f" / "train" / "cat" / "notes.txt").write_text("not an image")
    cfg = DataConfig(dataset="folder", path=str(tmp_path / "f"), val_size=2)
    x_train, y_train, x_test, y_test = load_raw("folder", path=cfg.path)
    # classes sorted (ant 0, cat 1, dog 2); written in the order of `spec`, read in sorted order
    assert y_train.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2] and y_test.tolist() == [0, 0, 2]
    order = [3, 4, 0, 1, 2, 5, 6, 7, 8]
    assert torch.equal(x_train[:, 0], torch.from_numpy(np.stack([written["train"][i] for i in order])))
    s = load_splits(cfg)
    assert s.info.classes == ("ant", "cat", "dog") and s.info.input_shape == (1, 6, 5) and s.info.n_files == 12
    files = sorted(p for p in (tmp_path / "f").rglob("*.png"))
    manifest = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(tmp_path / 'f').as_posix()}\n" for p in files)
    assert s.info.sha256 == hashlib.sha256(manifest.encode()).hexdigest()
    assert dataset_fingerprint(cfg) == s.info.fingerprint()


def test_folder_resizes_and_mixes_grey_into_rgb(tmp_path):
    write_folder(tmp_path / "f", {"train": {"a": 2, "b": 2}, "test": {"a": 1}}, size=(8, 8), mode="RGB")
    grey = np.full((5, 9), 77, np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "f" / "train" / "b" / "zz.png")
    with pytest.raises(DataError) as e:  # sizes differ and no data.image_size
        load_raw("folder", path=str(tmp_path / "f"))
    one_line(e, "train/b/zz.png", "5×9", "data.image_size")
    x_train, *_ = load_raw("folder", path=str(tmp_path / "f"), image_size=(4, 6))
    assert x_train.shape == (5, 3, 4, 6)
    assert torch.equal(x_train[4], torch.full((3, 4, 6), 77, dtype=torch.uint8))  # grey → three equal channels
    s = load_splits(DataConfig(dataset="folder", path=str(tmp_path / "f"), image_size=(4, 6), val_size=1))
    assert s.info.image_size == (4, 6) and s.info.preprocessing()["resize"] == "bilinear"


def test_folder_errors_name_the_file(tmp_path):
    write_folder(tmp_path / "f", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "c": 1}})
    with pytest.raises(DataError) as e:
        load_raw("folder", path=str(tmp_path / "f"))
    one_line(e, str(tmp_path / "f"), "test classes c")
    write_folder(tmp_path / "g", {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    png = tmp_path / "g" / "train" / "b" / "001.png"
    png.write_bytes(png.read_bytes()[:60])  # corrupted: cut inside the image data
    with pytest.raises(DataError) as e:
        load_raw("folder", path=str(tmp_path / "g"))
    one_line(e, str(tmp_path / "g"), "train/b/001.png", "unreadable")
    with pytest.raises(DataError) as e:
        load_raw("folder", path=str(tmp_path / "g" / "train"))  # no train/ inside
    one_line(e, "no folder 'train/'")


# ------------------------------------------------------------------------------- cifar100
def write_cifar100(folder: Path, n_train=7, n_test=3, seed=0) -> tuple[np.ndarray, ...]:
    """cifar-100-python/{train,test,meta}: Python pickles (protocol 2) of the authors' dicts."""
    folder.mkdir(parents=True)
    out = []
    for name, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = images(n, (3, 32, 32), s), labels(n, 100, s) if n >= 100 else np.random.default_rng(s).integers(0, 100, n)
        d = {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{name}ing batch 1 of 1",
             "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x.reshape(n, 3072)}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        out += [x, y]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]}, f, protocol=2)
    return tuple(out)


def test_cifar100_reads_the_python_pickles(tmp_path):
    x_train, y_train, x_test, y_test = write_cifar100(tmp_path / "cifar-100-python")
    got = load_raw("cifar100", tmp_path)
    assert torch.equal(got[0], torch.from_numpy(x_train)) and got[1].tolist() == y_train.tolist()
    assert torch.equal(got[2], torch.from_numpy(x_test)) and got[3].tolist() == y_test.tolist()
    s = load_splits(DataConfig(dataset="cifar100", val_size=2), tmp_path)
    assert s.info.n_classes == 100 and s.info.classes[7] == "class7" and s.info.mean == DATASETS["cifar100"].mean
    assert s.info.n_files == 2


def test_cifar100_corrupted_and_missing(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    d = pickle.loads((folder / "test").read_bytes())
    d["data"] = d["data"][:, :3000]
    (folder / "test").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DataError) as e:
        load_raw("cifar100", tmp_path)
    one_line(e, str(folder / "test"), "'data'", "(3, 3000)")
    (folder / "test").write_bytes((folder / "train").read_bytes()[:500])  # truncated pickle
    with pytest.raises(DataError) as e:
        load_raw("cifar100", tmp_path)
    one_line(e, str(folder / "test"), "not a readable pickle")
    (folder / "test").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")  # a pickle that would run a command
    with pytest.raises(DataError) as e:
        load_raw("cifar100", tmp_path)
    one_line(e, "os.system")
    monkeypatch.setenv("NEUROHW_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_raw("cifar100", tmp_path / "empty")
    assert str(tmp_path / "empty" / "cifar-100-python" / "train") in str(e.value) and "cifar-100-python.tar.gz" in str(e.value)


# ----------------------------------------------------------------------------------- svhn
MI = {"int8": 1, "uint8": 2, "int16": 3, "uint16": 4, "int32": 5, "uint32": 6, "float32": 7, "float64": 9, "int64": 12, "uint64": 13}
MX = {"float64": 6, "float32": 7, "int8": 8, "uint8": 9, "int16": 10, "uint16": 11, "int32": 12, "uint32": 13, "int64": 14, "uint64": 15}


def _element(mtype: int, data: bytes) -> bytes:
    if len(data) <= 4:  # small data element: type and byte count in one word, the data in the next
        return struct.pack("<HH", mtype, len(data)) + data.ljust(4, b"\0")
    return struct.pack("<II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)


def write_mat_v5(path: Path, variables: dict[str, tuple[np.ndarray, str | None]], compress: bool = True) -> None:
    """A MATLAB 5 MAT-file as MATLAB's `save` writes it: a miMATRIX per variable (array flags, dims,
    name, real part stored in `storage` when given, e.g. a double array of small integers as uint8),
    each zlib-compressed in an miCOMPRESSED element (-v7) or not (-v6)."""
    text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2015"
    out = text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    for name, (a, storage) in variables.items():
        stored = a.astype(storage or a.dtype)
        body = (_element(6, struct.pack("<II", MX[a.dtype.name], 0)) + _element(5, np.asarray(a.shape, "<i4").tobytes())
                + _element(1, name.encode()) + _element(MI[stored.dtype.name], stored.tobytes(order="F")))
        matrix = struct.pack("<II", 14, len(body)) + body
        out += struct.pack("<II", 15, len(c := zlib.compress(matrix))) + c if compress else matrix
    path.write_bytes(out)


def write_svhn(folder: Path, n_train=6, n_test=4, compress=True) -> tuple[np.ndarray, ...]:
    """svhn/{train,test}_32x32.mat: X uint8 (32, 32, 3, N), y double (N, 1) in 1 … 10 stored as uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n, s in (("train", n_train, 0), ("test", n_test, 1)):
        X = images(n, (32, 32, 3), s).transpose(1, 2, 3, 0)
        y = (np.arange(n) % 10 + 1).astype(np.float64).reshape(n, 1)  # 1 … 10, 10 = the digit 0
        write_mat_v5(folder / f"{name}_32x32.mat", {"X": (X, None), "y": (y, "uint8")}, compress)
        out += [X, y]
    return tuple(out)


@pytest.mark.parametrize("compress", [True, False])
def test_svhn_reads_matlab_files_and_maps_label_10_to_0(tmp_path, compress):
    X, y, Xt, yt = write_svhn(tmp_path / "svhn", compress=compress)
    x_train, y_train, x_test, y_test = load_raw("svhn", tmp_path)
    assert x_train.shape == (6, 3, 32, 32) and y_train.tolist() == [1, 2, 3, 4, 5, 6]
    assert y_test.tolist() == [1, 2, 3, 4]
    n, c, r, col = 4, 2, 7, 11  # image n, channel c, row r, column col is X[r, col, c, n]
    assert int(x_train[n, c, r, col]) == int(X[r, col, c, n]) and torch.equal(x_test, torch.from_numpy(Xt.transpose(3, 2, 0, 1)))
    write_svhn(tmp_path / "ten" / "svhn", n_train=12)
    assert load_raw("svhn", tmp_path / "ten")[1].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    s = load_splits(DataConfig(dataset="svhn", val_size=2), tmp_path / "ten")
    assert s.info.normalisation == "training split" and len(s.info.mean) == 3 and s.info.classes[0] == "0"


def test_matlab_reader_reads_every_numeric_class_in_matlab_order(tmp_path):
    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 7
    b = np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)
    write_mat_v5(tmp_path / "m.mat", {"alpha": (a, "int8"), "b": (b, None)}, compress=False)
    got = read_mat(tmp_path / "m.mat")
    assert got["alpha"].dtype == np.int16 and np.array_equal(got["alpha"], a) and np.array_equal(got["b"], b)


def test_svhn_corrupted_and_missing(tmp_path, monkeypatch):
    write_svhn(tmp_path / "svhn")
    mat = tmp_path / "svhn" / "train_32x32.mat"
    raw = bytearray(mat.read_bytes())
    raw[128 + 8 + 1500] ^= 0x55  # inside X's compressed stream, past its header
    mat.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_raw("svhn", tmp_path)
    one_line(e, str(mat), "array 'X'", "zlib")
    write_svhn(tmp_path / "svhn")
    test_mat = tmp_path / "svhn" / "test_32x32.mat"
    write_mat_v5(test_mat, {"X": (images(2, (32, 32, 3), 0).transpose(1, 2, 3, 0), None), "y": (np.array([[3.0], [11.0]]), None)})
    with pytest.raises(DataError) as e:
        load_raw("svhn", tmp_path)
    one_line(e, str(test_mat), "array 'y'", "label 11.0")
    monkeypatch.setenv("NEUROHW_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_raw("svhn", tmp_path / "empty")
    assert str(tmp_path / "empty" / "svhn" / "train_32x32.mat") in str(e.value)


# ----------------------------------------------------------------------------------- imagenet32
def write_imagenet32(base: Path, per_batch=3, n_val=4, unpacked=False) -> tuple[np.ndarray, ...]:
    """train_data_batch_1 … 10.npz and val_data.npz: 'data' uint8 (N, 3072), 'labels' 1 … 1000, 'mean'."""
    train_dir = base / "Imagenet32_train_npz" if unpacked else base
    val_dir = base / "Imagenet32_val_npz" if unpacked else base
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 11):
        x, y = images(per_batch, (3072,), i), np.random.default_rng(i).integers(1, 1001, per_batch)
        np.savez(train_dir / f"train_data_batch_{i}.npz", data=x, labels=y.tolist(), mean=x.mean(0))
        xs.append(x)
        ys.append(y)
    xv, yv = images(n_val, (3072,), 99), np.array([1, 1000, 500, 2])[:n_val]
    np.savez(val_dir / "val_data.npz", data=xv, labels=yv.tolist())
    return np.concatenate(xs), np.concatenate(ys), xv, yv


@pytest.mark.parametrize("unpacked", [False, True])
def test_imagenet32_reads_npz_batches_with_1_based_labels(tmp_path, unpacked):
    x, y, xv, yv = write_imagenet32(tmp_path / "imagenet32", unpacked=unpacked)
    x_train, y_train, x_test, y_test = load_raw("imagenet32", tmp_path)
    assert x_train.shape == (30, 3, 32, 32) and y_train.tolist() == (y - 1).tolist() and y_test.tolist() == [0, 999, 499, 1]
    # channel c of image n is the c-th block of 1,024 values, row-major (Chrabaszcz et al.'s layout)
    assert torch.equal(x_train[4, 1], torch.from_numpy(x[4, 1024:2048].reshape(32, 32)))
    assert torch.equal(x_test.reshape(4, 3072), torch.from_numpy(xv))
    s = load_splits(DataConfig(dataset="imagenet32", val_size=5), tmp_path)
    assert s.info.n_files == 11 and s.info.n_classes == 1000 and len(s.train) == 25


def test_imagenet32_corrupted_and_missing(tmp_path):
    write_imagenet32(tmp_path / "imagenet32")
    bad = tmp_path / "imagenet32" / "train_data_batch_7.npz"
    with np.load(bad) as z:
        np.savez(bad, data=z["data"], labels=np.r_[0, z["labels"][1:]])  # label 0: not 1-based
    with pytest.raises(DataError) as e:
        load_raw("imagenet32", tmp_path)
    one_line(e, str(bad), "'labels'", "label 0", "1-based")
    write_imagenet32(tmp_path / "imagenet32")
    raw = bytearray(bad.read_bytes())
    with np.load(bad) as z:
        at = raw.index(z["data"].tobytes()[:64])
    raw[at + 10] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_raw("imagenet32", tmp_path)
    one_line(e, str(bad), "'data'", "unreadable")
    bad.unlink()
    with pytest.raises(DataError) as e:
        load_raw("imagenet32", tmp_path)
    assert str(bad) in str(e.value) and "Imagenet32_train_npz" in str(e.value) and "account" in str(e.value)


# ------------------------------------------------------------------------ config, fingerprints
def test_keys_only_arrays_and_folder_use_are_refused_elsewhere():
    with pytest.raises(ConfigError, match="data.path .*not used by this run.*'arrays' or 'folder'"):
        load_config(None, ["data.path=x.npz"])
    with pytest.raises(ConfigError, match="data.image_size .*not used.*'folder'"):
        load_config(None, ["data.dataset=arrays", "data.path=x.npz", "data.image_size=32"])
    with pytest.raises(ConfigError, match="needs data.path"):
        load_config(None, ["data.dataset=arrays"])
    cfg = load_config(None, ["data.dataset=folder", "data.path=imgs", "data.image_size=32"])
    assert cfg.data.image_size == (32,)


def test_config_accepts_exactly_the_datasets_that_data_loads():
    """config.py stays torch-free, so it spells the names out: they must be neurohw.data's."""
    from neurohw.data import DATASET_NAMES

    with pytest.raises(ConfigError) as e:
        DataConfig(dataset="mnits")
    assert str(e.value).split("valid: ")[1].split(", ") == list(DATASET_NAMES)


def test_fingerprint_is_checked_against_the_data_found_now(tmp_path):
    np.savez(tmp_path / "d.npz", **GOOD)
    cfg = arrays_cfg(tmp_path / "d.npz")
    stored = load_splits(cfg).info.fingerprint()
    assert dataset_fingerprint(cfg) == stored and check_fingerprint(stored, dataset_fingerprint(cfg)) == []
    (tmp_path / "moved").mkdir()
    (tmp_path / "d.npz").rename(tmp_path / "moved" / "d.npz")
    notes = check_fingerprint(stored, dataset_fingerprint(arrays_cfg(tmp_path / "moved" / "d.npz")))
    assert len(notes) == 1 and "moved" in notes[0]
    np.savez(tmp_path / "d.npz", **{**GOOD, "y_test": GOOD["y_test"][::-1].copy()})
    with pytest.raises(DataError) as e:
        check_fingerprint(stored, dataset_fingerprint(cfg))
    one_line(e, "changed", stored["sha256"])


def test_data_info_prints_the_resolved_dataset(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", **GOOD)
    rc = main(["data-info", str(MODELS / "mnist_ep_fc1.toml"), "data.dataset=arrays", f"data.path={tmp_path / 'd.npz'}", "data.val_size=2"])
    out = capsys.readouterr().out
    assert rc == 0
    digest = hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()
    for words in (str(tmp_path / "d.npz"), digest, "train 10, validation 2", "test 4", "1×3×3 images", "classes        3",
                  "computed on the training split"):
        assert words in out, (words, out)
    np.savez(tmp_path / "v.npz", x_train=images(12, (9,), 0), y_train=labels(12, 3, 0), x_test=images(4, (9,), 1), y_test=labels(4, 3, 1))
    rc = main(["data-info", str(MODELS / "mnist_ep_conv.toml"), "data.dataset=arrays", f"data.path={tmp_path / 'v.npz'}", "data.val_size=2"])
    assert rc == 2 and "vectors" in capsys.readouterr().err  # a conv card on vectors is refused


# ------------------------------------------------------------------------------------ training
def _first_epoch(out: Path) -> dict:
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return {k: v for k, v in line.items() if "time" not in k and "wall" not in k and not k.endswith("_s")}


def test_mnist_as_arrays_trains_exactly_as_the_builtin_mnist(tmp_path):
    """Real MNIST digits saved as N×H×W uint8 arrays, data.mean = [0], data.std = [1]: the same seed and
    split give the built-in mnist run's first-epoch numbers and weights, bit for bit (float64)."""
    from neurohw.train import train

    x_train, y_train, x_test, y_test = load_raw("mnist")
    np.savez(tmp_path / "mnist.npz", x_train=x_train[:, 0].numpy(), y_train=y_train.numpy(),
             x_test=x_test[:, 0].numpy(), y_test=y_test.numpy())
    common = ["device=cpu", "dtype=float64", "train.epochs=1", "data.limit_train=100", "data.limit_eval=50",
              "net.hidden=[32]", "learner.T_free=8", "learner.T_nudge=4", "data.split_seed=3"]
    card = MODELS / "mnist_ep_fc1.toml"
    builtin = train(load_config(card, common), tmp_path / "builtin", progress=False, log=None)
    arrays = train(load_config(card, common + ["data.dataset=arrays", f"data.path={tmp_path / 'mnist.npz'}",
                                              "data.mean=[0]", "data.std=[1]"]), tmp_path / "arrays", progress=False, log=None)
    first = _first_epoch(tmp_path / "builtin")
    assert first["train_loss"] > 0 and _first_epoch(tmp_path / "arrays") == first
    assert (builtin["val_error"], builtin["test_error"]) == (arrays["val_error"], arrays["test_error"])
    a = torch.load(tmp_path / "builtin" / "checkpoint.pt", weights_only=True)["net"]
    b = torch.load(tmp_path / "arrays" / "checkpoint.pt", weights_only=True)["net"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_tiny_folder_dataset_trains_a_few_batches(tmp_path):
    from neurohw.train import train

    write_folder(tmp_path / "f", {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}}, size=(9, 9), mode="RGB")
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", [
        "device=cpu", "dtype=float64", "train.epochs=1", "train.batch_size=2", "net.hidden=[8]", "learner.T_free=5",
        "learner.T_nudge=2", "data.dataset=folder", f"data.path={tmp_path / 'f'}", "data.image_size=[4, 5]", "data.val_size=2",
    ])
    summary = train(cfg, tmp_path / "run", progress=False, log=None)
    first = _first_epoch(tmp_path / "run")
    assert np.isfinite(first["train_loss"]) and 0.0 <= summary["test_error"] <= 1.0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["net"]
    w = next(v for k, v in state.items() if k.endswith("weight"))
    assert w.shape == (8, 3 * 4 * 5)  # 3 channels resized to 4×5, flattened


# ----------------------------------------------------------------- the data of a run, end to end
def test_a_float_arrays_run_exports_its_preprocessing_and_simulates_from_its_file(tmp_path, capsys):
    """train → export → simulate --data on float arrays (pixel scale 1, normalisation computed on the
    training split): the exported file records the data's preprocessing and fingerprint, the torch
    substrate reproduces the trained net's predictions bit for bit, and a changed file is refused on
    --resume and by simulate (planted: export taking MNIST's defaults, or simulate skipping the check)."""
    import torch

    from neurohw.cli import main
    from neurohw.config import load_config
    from neurohw.data import DataError
    from neurohw.io.hdf5 import load_spec
    from neurohw.simulate import simulate
    from neurohw.train import train

    g = np.random.default_rng(0)
    x = g.random((300, 1, 6, 6)) * 3.0 + 1.0  # float values, not pixels: mean ≈ 2.5, std ≈ 0.87
    y = (x[:, 0, :3].mean((1, 2)) > x[:, 0, 3:].mean((1, 2))).astype(np.int64)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    run = tmp_path / "run"
    overrides = ["data.dataset=arrays", f"data.path={data}", "data.val_size=40", "net.hidden=[8]", "train.epochs=1",
                 "train.lrs=[0.05]", "train.scheduler=none", "learner.T_free=10", "learner.T_nudge=4", "device=cpu"]
    cfg = load_config(Path(__file__).resolve().parents[2] / "models" / "mnist_ep_fc1.toml", overrides)
    train(cfg, run, progress=False, log=None)
    assert "sha256 = " in (run / "config.toml").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "net.h5")]) == 0
    spec = load_spec(tmp_path / "net.h5")
    assert spec.pixel_scale == 1.0 and spec.dataset["dataset"] == "arrays" and spec.dataset["sha256"]
    assert spec.input_mean[0] == pytest.approx(x[:240].mean(), abs=0.05) and spec.image_shape == (1, 6, 6)
    report = simulate(tmp_path / "net.h5", "torch", n=0, data=str(data))
    ck = torch.load(run / "best.pt", weights_only=True)
    assert report["n_samples"] == 60 and report["accuracy"] == report["reference_accuracy"]
    from neurohw.data import Preprocess, load_splits
    from neurohw.learning import build_learner
    from neurohw.train import build_model

    splits = load_splits(cfg.data)
    net = build_model(cfg, (1, 6, 6), 2)
    net.load_state_dict(ck["net"])
    pre = Preprocess(splits.info, net.input_shape, torch.device("cpu"), torch.float32)
    want = build_learner(cfg.learner).predict(net, pre(splits.test.images)).argmax(1).numpy()
    from neurohw.nets.convert import from_spec  # noqa: F401  (the substrate builds it from the file)
    from neurohw.substrates.torch import TorchSubstrate

    got = TorchSubstrate().run(spec, spec.preprocess(splits.test.images.numpy())).predictions
    assert np.array_equal(got, want)
    with pytest.raises(Exception, match="pass --data"):
        simulate(tmp_path / "net.h5", "torch", n=0)
    np.savez(data, x_train=x[:240], y_train=y[:240], x_test=x[240:] + 1e-3, y_test=y[240:])  # the data changed
    with pytest.raises(DataError, match="changed since the network"):
        simulate(tmp_path / "net.h5", "torch", n=0, data=str(data))
    with pytest.raises(DataError, match="changed since the run"):
        train(load_config(run / "config.toml", ["train.epochs=2"]), run, resume=True, progress=False, log=None)


def test_a_sweep_trains_on_an_arrays_dataset_as_single_runs_do(tmp_path):
    """`neurohw sweep` on float arrays: each member's run directory records the data (sha256) and its
    weights equal a single `train` run of its config (float64), so the population applies the dataset's
    own preprocessing (normalisation computed on the training split, pixel scale 1)."""
    from neurohw.population import sweep
    from neurohw.train import train

    g = np.random.default_rng(1)
    x = g.random((200, 1, 5, 5)) * 2.0 + 3.0
    y = (x[:, 0, :2].mean((1, 2)) > x[:, 0, 3:].mean((1, 2))).astype(np.int64)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    common = ["data.dataset=arrays", f"data.path={data}", "data.val_size=40", "net.hidden=[6]", "train.epochs=1",
              "train.scheduler=none", "learner.T_free=6", "learner.T_nudge=3", "device=cpu", "dtype=float64"]
    card = MODELS / "mnist_ep_fc1.toml"
    rows = sweep(card, ["seed=0,1", *common], tmp_path / "sw", progress=False, log=None)
    assert [r["status"] for r in rows] == ["complete"] * 2
    for r in rows:
        member = tmp_path / "sw" / r["dir"]
        assert "sha256 = " in (member / "config.toml").read_text()
        seed = r["dir"].split("train.seed=")[1][0]
        train(load_config(card, [*common, f"train.seed={seed}", f"learner.seed={seed}"]), tmp_path / f"single{seed}",
              progress=False, log=None)
        a = torch.load(member / "checkpoint.pt", weights_only=True)["net"]
        b = torch.load(tmp_path / f"single{seed}" / "checkpoint.pt", weights_only=True)["net"]
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-12) for k in a), seed
