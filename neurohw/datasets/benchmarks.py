"""CIFAR-100, SVHN and ImageNet 32×32 in their published on-disk formats.

cifar100: `cifar-100-python/train` and `cifar-100-python/test` (and `meta` for the class names), the
pickled dicts of the authors' python archive: 'data' uint8 (N, 3072) as red, green and blue 32×32
planes, 'fine_labels' (the 100 classes; 'coarse_labels' are not used). Downloadable (torchvision's
address and MD5 of cifar-100-python.tar.gz).

svhn: `svhn/train_32x32.mat` and `svhn/test_32x32.mat` (the cropped digits, format 2), MATLAB 5
MAT-files read by neurohw.datasets.matlab: 'X' uint8 (32, 32, 3, N) as (row, column, channel,
sample), 'y' (N, 1) in 1 … 10, where 10 is the digit 0. Downloadable (torchvision's addresses and MD5s).

imagenet32: Chrabaszcz, Loshchilov & Hutter 2017's downsampled ImageNet, npz version:
`imagenet32/train_data_batch_1.npz` … `train_data_batch_10.npz` and `imagenet32/val_data.npz` (or in
the folders `Imagenet32_train_npz/` and `Imagenet32_val_npz/` that the archives unpack to): 'data'
uint8 (N, 3072) as three 32×32 planes, 'labels' in 1 … 1000 (1-based; taken as 0 … 999). The
validation set is the test split. Not downloadable (ImageNet's downloads need an account).

The pickles are read by an unpickler that builds nothing but numpy arrays, lists, dicts and strings.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from neurohw.datasets.common import RawData, check_labels, one_line, to_tensor
from neurohw.datasets.matlab import MatFileError, read_mat
from neurohw.errors import DataError

CIFAR100_FOLDER = "cifar-100-python"
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
IMAGENET32_TRAIN = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
IMAGENET32_VAL = "val_data.npz"


def _candidates(*folders: Path) -> list[Path]:
    out: list[Path] = []
    for f in folders:
        if f not in out:
            out.append(f)
    return out


def _missing(name: str, why: str, expected: list[Path], put: str) -> DataError:
    return DataError(
        f"dataset '{name}' not found and not downloadable ({why}); looked for the files\n  "
        + "\n  ".join(str(p) for p in expected)
        + f"\n{put} Pass --data-dir or set NEUROHW_DATA to the data directory that holds them."
    )


# ------------------------------------------------------------------------------------- cifar100
class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain Python data only (no other global is ever imported)."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            try:
                import numpy._core.multiarray as multiarray  # numpy ≥ 2
            except ImportError:
                import numpy.core.multiarray as multiarray

            return getattr(multiarray, name)
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3 at protocol 2
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"it refers to '{module}.{name}', which a CIFAR pickle does not hold")


def _unpickle(path: Path, dataset: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{dataset} '{path}': not a readable pickle: {one_line(e)}") from None
    if not isinstance(d, dict):
        raise DataError(f"{dataset} '{path}': the pickle holds a {type(d).__name__}, not the dict of a CIFAR batch")
    return d


def _cifar100_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    where = f"cifar100 '{path}'"
    d = _unpickle(path, "cifar100")
    for key in ("data", "fine_labels"):
        if key not in d:
            raise DataError(f"{where}: no array '{key}' (the pickle holds: {', '.join(map(str, d)) or 'nothing'})")
    x = d["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = getattr(x, "shape", None)
        raise DataError(f"{where}: array 'data' is {getattr(x, 'dtype', type(x).__name__)} of shape {shape}; expected uint8 (N, 3072)")
    y = check_labels(where, "fine_labels", np.asarray(d["fine_labels"]), x.shape[0], 100)
    return x.reshape(-1, 3, 32, 32), y


def cifar100_files(root: Path, cache: Path) -> tuple[Path, tuple[Path, ...]] | None:
    """(folder, files) of CIFAR-100 found in the data directory or the cache, else None."""
    for f in _candidates(root / CIFAR100_FOLDER, cache / CIFAR100_FOLDER):
        if (f / "train").is_file() and (f / "test").is_file():
            return f, (f / "train", f / "test")
    return None


def load_cifar100(root: Path, cache: Path, download: bool) -> RawData:
    found = cifar100_files(root, cache)
    if found is None:
        why = "download not allowed"
        if download:
            try:
                import torchvision
                from torchvision.datasets.utils import download_and_extract_archive

                c = torchvision.datasets.CIFAR100
                download_and_extract_archive(c.url, str(cache), filename=c.filename, md5=c.tgz_md5)
                found = cifar100_files(root, cache)
                why = "the download held no cifar-100-python/train and test"
            except Exception as e:
                why = one_line(e)
        if found is None:
            folders = _candidates(root / CIFAR100_FOLDER, cache / CIFAR100_FOLDER)
            raise _missing(
                "cifar100", why, [f / n for f in folders for n in ("train", "test")],
                f"Unpack cifar-100-python.tar.gz (the python version) into '{root}'.",
            )
    folder = found[0]
    x_train, y_train = _cifar100_split(folder / "train")
    x_test, y_test = _cifar100_split(folder / "test")
    classes: tuple[str, ...] = ()
    if (folder / "meta").is_file():
        names = _unpickle(folder / "meta", "cifar100").get("fine_label_names", ())
        classes = tuple(str(n) for n in names) if len(names) == 100 else ()
    return RawData(
        to_tensor(x_train), to_tensor(y_train), to_tensor(x_test), to_tensor(y_test),
        path=folder, files=(folder / "train", folder / "test"), n_classes=100, classes=classes,
    )


# ----------------------------------------------------------------------------------------- svhn
def _svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    where = f"svhn '{path}'"
    try:
        mat = read_mat(path, {"X", "y"})
    except MatFileError as e:
        raise DataError(f"{where}: {f'array {e.variable!r}: ' if e.variable else ''}{e}") from None
    except OSError as e:
        raise DataError(f"{where}: cannot read it: {one_line(e)}") from None
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{where}: array 'X' is {x.dtype} of shape {x.shape}; expected uint8 (32, 32, 3, N)")
    n = x.shape[3]
    if y.size != n or (y.ndim == 2 and 1 not in y.shape) or y.ndim > 2:
        raise DataError(f"{where}: array 'y' has shape {y.shape}; expected ({n}, 1), one label per image")
    y = y.reshape(-1)
    if not np.array_equal(y, np.round(y)) or (y.size and (y.min() < 1 or y.max() > 10)):
        bad = int(np.flatnonzero((y != np.round(y)) | (y < 1) | (y > 10))[0])
        raise DataError(f"{where}: array 'y': label {y[bad]} of image {bad} is not an integer in 1 … 10 (10: the digit 0)")
    labels = y.astype(np.int64) % 10  # SVHN's label 10 is the digit 0
    return x.transpose(3, 2, 0, 1), labels  # (row, column, channel, sample) → (sample, channel, row, column)


def svhn_files(root: Path, cache: Path) -> tuple[Path, tuple[Path, ...]] | None:
    """(folder, files) of SVHN found in the data directory or the cache, else None."""
    for f in _candidates(root / "svhn", cache / "svhn"):
        if all((f / n).is_file() for n in SVHN_FILES):
            return f, tuple(f / n for n in SVHN_FILES)
    return None


def load_svhn(root: Path, cache: Path, download: bool) -> RawData:
    found = svhn_files(root, cache)
    if found is None:
        why = "download not allowed"
        if download:
            try:
                import torchvision
                from torchvision.datasets.utils import download_url

                for split in ("train", "test"):
                    url, filename, md5 = torchvision.datasets.SVHN.split_list[split]
                    download_url(url, str(cache / "svhn"), filename, md5)
                found = svhn_files(root, cache)
                why = "the download held no train_32x32.mat and test_32x32.mat"
            except Exception as e:
                why = one_line(e)
        if found is None:
            folders = _candidates(root / "svhn", cache / "svhn")
            raise _missing(
                "svhn", why, [f / n for f in folders for n in SVHN_FILES],
                f"Put train_32x32.mat and test_32x32.mat (SVHN's cropped digits, format 2) into '{root / 'svhn'}'.",
            )
    folder = found[0]
    x_train, y_train = _svhn_split(folder / SVHN_FILES[0])
    x_test, y_test = _svhn_split(folder / SVHN_FILES[1])
    return RawData(
        to_tensor(x_train), to_tensor(y_train), to_tensor(x_test), to_tensor(y_test),
        path=folder, files=tuple(folder / n for n in SVHN_FILES), n_classes=10, classes=tuple(str(d) for d in range(10)),
    )


# ----------------------------------------------------------------------------------- imagenet32
def _imagenet32_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    where = f"imagenet32 '{path}'"
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{where}: cannot open it as an .npz file: {one_line(e)}") from None
    with archive:
        arrays = {}
        for key in ("data", "labels"):
            if key not in archive.files:
                raise DataError(f"{where}: no array '{key}' (the file holds: {', '.join(archive.files) or 'nothing'})")
            try:
                arrays[key] = archive[key]
            except Exception as e:
                raise DataError(f"{where}: array '{key}' is unreadable: {one_line(e)}") from None
    x = arrays["data"]
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{where}: array 'data' is {x.dtype} of shape {x.shape}; expected uint8 (N, 3072)")
    y = np.asarray(arrays["labels"])
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: array 'labels' has dtype {y.dtype}; expected integers 1 … 1000")
    if y.size and (y.min() < 1 or y.max() > 1000):
        bad = int(np.flatnonzero((y < 1) | (y > 1000))[0])
        raise DataError(f"{where}: array 'labels': label {int(y[bad])} of image {bad} is not in 1 … 1000 (ImageNet32's labels are 1-based)")
    y = check_labels(where, "labels", y.astype(np.int64) - 1, x.shape[0], 1000)
    return x.reshape(-1, 3, 32, 32), y


def _first_with(folders: list[Path], name: str) -> Path | None:
    return next((f / name for f in folders if (f / name).is_file()), None)


def imagenet32_files(root: Path) -> tuple[Path, tuple[Path, ...]] | None:
    """(folder, the ten training batches then the validation file) of ImageNet32, else None."""
    base = root / "imagenet32"
    train = [_first_with([base, base / "Imagenet32_train_npz"], n) for n in IMAGENET32_TRAIN]
    val = _first_with([base, base / "Imagenet32_val_npz"], IMAGENET32_VAL)
    return None if val is None or None in train else (base, (*train, val))


def load_imagenet32(root: Path) -> RawData:
    base = root / "imagenet32"
    found = imagenet32_files(root)
    if found is None:
        train = [_first_with([base, base / "Imagenet32_train_npz"], n) for n in IMAGENET32_TRAIN]
        val = _first_with([base, base / "Imagenet32_val_npz"], IMAGENET32_VAL)
        missing = [base / n for n, p in zip(IMAGENET32_TRAIN, train) if p is None] + ([base / IMAGENET32_VAL] if val is None else [])
        raise _missing(
            "imagenet32", "ImageNet's downloads need an account", missing,
            f"Download Imagenet32_train_npz.zip and Imagenet32_val_npz.zip (downsampled ImageNet 32×32, npz) from "
            f"image-net.org and unpack them into '{base}' (the folders Imagenet32_train_npz/ and Imagenet32_val_npz/ "
            "may stay as they unpack).",
        )
    files = found[1]
    xs, ys = zip(*(_imagenet32_batch(p) for p in files[:-1]))
    x_test, y_test = _imagenet32_batch(files[-1])
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    del xs
    return RawData(
        to_tensor(x_train), to_tensor(y_train), to_tensor(x_test), to_tensor(y_test),
        path=base, files=files, n_classes=1000,
    )
