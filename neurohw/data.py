"""Datasets, data-directory resolution, train/validation/test splits, batches and augmentation.

Data directory: `--data-dir`, else `$NEUROHW_DATA`, else `./data`, else the `data/` folder of the
source checkout (which holds the four MNIST files, committed). For MNIST and Fashion-MNIST the
gzipped IDX files in `<dir>/mnist/` (`<dir>/fashion_mnist/`) are unpacked once into torchvision's raw
layout `<dir>/MNIST/raw/` (or a user cache when `<dir>` is read-only) and read by torchvision. A
dataset that is missing is downloaded by torchvision when the network allows (not when
`NEUROHW_OFFLINE=1`); otherwise a DataError names every file looked for and where. CIFAR-100, SVHN
and ImageNet 32×32 are read from their published formats (neurohw/datasets/benchmarks.py); your own
data is `arrays` (an .npz or HDF5 file) or `folder` (train/<class>/*.png, test/<class>/*.png) at
`data.path` (neurohw/datasets/files.py).

Images stay uint8 on the training device (float32/float64 for float arrays); `Preprocess` turns a
batch into the network input `(x/scale − mean)/std` (per channel; scale 255 for uint8 pixels, 1 for
float values), flattened in C order for a dense first layer.

For the run directory and exported files: `Splits.info` (a DatasetInfo) carries the resolved `path`,
the `sha256` of the files read and the preprocessing; `info.fingerprint()` and `info.preprocessing()`
are plain dicts to store, `check_fingerprint` compares a stored fingerprint with the data found now,
`dataset_fingerprint(cfg, data_dir)` computes one without decoding the data, and `check_net` refuses
a conv net on vector data.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from neurohw.datasets.common import RawData, digest
from neurohw.errors import ConfigError, DataError

CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know of its data, and where the data came from."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) of the images; (1, 1, D) for vectors
    n_classes: int
    mean: tuple[float, ...]  # per channel, of x/scale; () in DATASETS: computed on the training split
    std: tuple[float, ...]
    scale: float = 255.0  # the images are divided by it: 255 for uint8 pixels, 1 for float values
    path: str = ""  # the file or folder the data was read from (resolved)
    sha256: str = ""  # of that file, or of the manifest of the files read (neurohw.datasets.common.digest)
    n_files: int = 0  # how many files the digest covers
    flat: bool = False  # vectors (N, D) taken as 1×1×D images: dense nets only, no augmentation
    image_size: tuple[int, ...] = ()  # folder: the (H, W) every image was resized to; () none
    classes: tuple[str, ...] = ()  # class names where the data has them
    normalisation: str = "default"  # where mean/std come from: default | config | training split

    def fingerprint(self) -> dict:
        """What identifies the data (for config.toml, checked on --resume by `check_fingerprint`)."""
        return {"dataset": self.name, "path": self.path, "sha256": self.sha256, "files": self.n_files}

    def preprocessing(self) -> dict:
        """How images become the network input (for an exported network): (x/pixel_scale − mean)/std per
        channel, after resizing to image_size (bilinear) for a folder dataset."""
        return {
            "dataset": self.name,
            "input_shape": list(self.input_shape),
            "pixel_scale": float(self.scale),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "normalisation": self.normalisation,
            "image_size": list(self.image_size),
            "resize": "bilinear" if self.image_size else "none",
            "flat": self.flat,
        }


DATASETS = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.0,), (1.0,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 10, (0.0,), (1.0,)),
    # Laborieux et al. 2021 normalise CIFAR-10 by three standard deviations
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)),
    # Laborieux & Zenke 2022 (holomorphic EP, utils/data.py of their code): CIFAR-10's statistics for
    # CIFAR-100, ImageNet's for ImageNet 32×32, both with 1.5 standard deviations
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), 100, (0.4914, 0.4822, 0.4465), (1.5 * 0.2023, 1.5 * 0.1994, 1.5 * 0.2010)),
    # no EP paper to follow: mean and std computed on the training split, as for your own data
    "svhn": DatasetInfo("svhn", (3, 32, 32), 10, (), ()),
    "imagenet32": DatasetInfo("imagenet32", (3, 32, 32), 1000, (0.485, 0.456, 0.406), (1.5 * 0.229, 1.5 * 0.224, 1.5 * 0.225)),
}
FILE_DATASETS = ("arrays", "folder")  # your own data, at data.path: shape and classes come from the files
DATASET_NAMES = (*DATASETS, *FILE_DATASETS)

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_LAYOUT = {"mnist": ("mnist", "MNIST"), "fashion_mnist": ("fashion_mnist", "FashionMNIST")}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """`data_dir`, else $NEUROHW_DATA, else ./data, else the checkout's data/ (see module doc)."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get("NEUROHW_DATA"):
        return Path(os.environ["NEUROHW_DATA"])
    local = Path("data")
    return local if local.is_dir() else CHECKOUT_DATA


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def _cache_root(root: Path) -> Path:
    """Where torchvision's raw layout is prepared: `root` if writable, else a user cache."""
    if _writable(root):
        return root
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neurohw" / "data"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _gunzip_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_allowed(allow_download: bool) -> bool:
    return allow_download and os.environ.get("NEUROHW_OFFLINE", "") not in ("1", "true", "yes")


def _load_idx(name: str, root: Path, allow_download: bool) -> tuple[torch.Tensor, ...]:
    import torchvision

    folder, cls_name = _IDX_LAYOUT[name]
    cls = getattr(torchvision.datasets, cls_name)
    gz_dir = root / folder
    cache = _cache_root(root)
    raw = cache / cls_name / "raw"
    for f in _IDX_FILES:
        if not (raw / f).exists():
            for candidate in (gz_dir / f"{f}.gz", root / cls_name / "raw" / f"{f}.gz"):
                if candidate.exists():
                    try:
                        _gunzip_atomic(candidate, raw / f)
                    except (OSError, EOFError, gzip.BadGzipFile) as e:
                        raise DataError(f"{name}: cannot unpack '{candidate}': {e}") from None
                    break
    have_all = all((raw / f).exists() for f in _IDX_FILES)
    try:
        if not have_all:
            if not _download_allowed(allow_download):
                raise RuntimeError("download not allowed")
            with _socket_timeout(20.0):
                cls(str(cache), train=True, download=True)
                cls(str(cache), train=False, download=True)
        train, test = cls(str(cache), train=True), cls(str(cache), train=False)
    except Exception as e:  # torchvision raises RuntimeError / URLError / OSError
        looked = [str(gz_dir / f"{f}.gz") for f in _IDX_FILES] + [str(raw / f) for f in _IDX_FILES]
        raise DataError(
            f"dataset '{name}' not found and not downloadable ({e}); looked for the files\n  "
            + "\n  ".join(looked)
            + f"\nPut the four gzipped IDX files into '{gz_dir}' or pass --data-dir / set NEUROHW_DATA."
        ) from None
    return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


def _load_cifar10(root: Path, allow_download: bool) -> tuple[torch.Tensor, ...]:
    import torchvision

    cache = _cache_root(root)
    folder = cache / "cifar-10-batches-py"
    try:
        download = not folder.exists() and _download_allowed(allow_download)
        with _socket_timeout(60.0):
            train = torchvision.datasets.CIFAR10(str(cache), train=True, download=download)
            test = torchvision.datasets.CIFAR10(str(cache), train=False, download=download)
    except Exception as e:
        raise DataError(
            f"dataset 'cifar10' not found and not downloadable ({e}); looked for '{folder}' "
            f"(data_batch_1 … data_batch_5, test_batch) and '{cache / 'cifar-10-python.tar.gz'}'. "
            "Pass --data-dir or set NEUROHW_DATA to a folder that holds them."
        ) from None
    as_tensor = lambda d: torch.from_numpy(d).permute(0, 3, 1, 2).contiguous()
    return as_tensor(train.data), torch.tensor(train.targets), as_tensor(test.data), torch.tensor(test.targets)


def _as_raw(name: str, tensors: tuple[torch.Tensor, ...], path: Path, files: tuple[Path, ...]) -> RawData:
    x_train, y_train, x_test, y_test = tensors
    return RawData(x_train, y_train, x_test, y_test, path=path, files=files, n_classes=DATASETS[name].n_classes)


def _named_files(name: str, root: Path) -> tuple[Path, tuple[Path, ...]] | None:
    """(folder, files) that the named dataset is read from, if they are all on disk."""
    from neurohw.datasets import benchmarks

    if name in _IDX_LAYOUT:
        raw = _cache_root(root) / _IDX_LAYOUT[name][1] / "raw"
        found = raw, tuple(raw / f for f in _IDX_FILES)
    elif name == "cifar10":
        folder = _cache_root(root) / "cifar-10-batches-py"
        found = folder, tuple(folder / f for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"))
    elif name == "cifar100":
        return benchmarks.cifar100_files(root, _cache_root(root))
    elif name == "svhn":
        return benchmarks.svhn_files(root, _cache_root(root))
    else:
        return benchmarks.imagenet32_files(root)
    return found if all(f.is_file() for f in found[1]) else None


def load_source(
    name: str,
    data_dir: str | Path | None = None,
    *,
    allow_download: bool = True,
    path: str = "",
    image_size: tuple[int, ...] = (),
) -> RawData:
    """The dataset `name` as read, with the files read (`path`, `image_size`: of arrays and folder)."""
    from neurohw.datasets import benchmarks, files

    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset '{name}'; valid: {', '.join(DATASET_NAMES)}")
    root = resolve_data_dir(data_dir)
    if name == "arrays":
        return files.read_arrays(files.resolve_path(name, path, root))
    if name == "folder":
        return files.read_folder(files.resolve_path(name, path, root), tuple(image_size))
    download = _download_allowed(allow_download)
    if name == "cifar100":
        with _socket_timeout(60.0):
            return benchmarks.load_cifar100(root, _cache_root(root), download)
    if name == "svhn":
        with _socket_timeout(60.0):
            return benchmarks.load_svhn(root, _cache_root(root), download)
    if name == "imagenet32":
        return benchmarks.load_imagenet32(root)
    tensors = _load_cifar10(root, allow_download) if name == "cifar10" else _load_idx(name, root, allow_download)
    found = _named_files(name, root)
    if found is None:  # torchvision read them, so they are there
        raise DataError(f"dataset '{name}': the files read are not where expected under '{_cache_root(root)}'")
    return _as_raw(name, tensors, found[0].resolve(), found[1])


def load_raw(
    name: str,
    data_dir: str | Path | None = None,
    *,
    allow_download: bool = True,
    path: str = "",
    image_size: tuple[int, ...] = (),
) -> tuple[torch.Tensor, ...]:
    """(train_images, train_labels, test_images, test_labels): (N, C, H, W) uint8 (float32/float64 for
    float arrays) and int64 (N,); `path` and `image_size` for the arrays and folder datasets."""
    return load_source(name, data_dir, allow_download=allow_download, path=path, image_size=image_size).as_tuple()


# ----------------------------------------------------------------------------------- splits
@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W); float32/float64 for float arrays
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Splits:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split


def split_indices(n: int, val_size: int, split_seed: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) indices of n training samples: `val_size` drawn by a permutation seeded
    with `split_seed` (eq. split), each sorted."""
    if not 0 <= val_size < n:
        raise DataError(f"data.val_size = {val_size} must lie in [0, {n}) for dataset '{name}'")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def make_splits(
    info: DatasetInfo,
    raw: tuple[torch.Tensor, ...],
    *,
    val_size: int,
    split_seed: int,
    limit_train: int = 0,
    limit_eval: int = 0,
) -> Splits:
    """Hold `val_size` training samples out for validation (a seeded permutation); the test set is untouched."""
    x_train, y_train, x_test, y_test = raw
    train_idx, val_idx = split_indices(int(y_train.shape[0]), val_size, split_seed, info.name)
    if limit_train:
        train_idx = train_idx[:limit_train]
    test_idx = torch.arange(int(y_test.shape[0]))
    if limit_eval:
        val_idx, test_idx = val_idx[:limit_eval], test_idx[:limit_eval]
    return Splits(
        info,
        Split(x_train[train_idx], y_train[train_idx]),
        Split(x_train[val_idx], y_train[val_idx]),
        Split(x_test[test_idx], y_test[test_idx]),
    )


def synthetic_splits(info: DatasetInfo, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Splits:
    """Random uint8 images and labels of a dataset's shape (timing a card without its data: CIFAR-10
    is on no machine of the project); seeded, on the CPU. A dataset whose normalisation is computed on
    its training split (svhn) gets mean 0 and std 1 here."""
    g = torch.Generator().manual_seed(seed)
    if not info.mean:
        c = info.input_shape[0]
        info = replace(info, mean=(0.0,) * c, std=(1.0,) * c, scale=255.0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, *info.input_shape), generator=g, dtype=torch.uint8)
        return Split(images, torch.randint(0, info.n_classes, (n,), generator=g))

    return Splits(info, split(n_train), split(n_val), split(n_test))


def limit_splits(splits: Splits, limit_train: int = 0, limit_eval: int = 0) -> Splits:
    """The first `limit_train` training and `limit_eval` validation/test samples (0: all)."""
    cut = lambda s, n: Split(s.images[:n], s.labels[:n]) if n and n < len(s) else s
    return Splits(splits.info, cut(splits.train, limit_train), cut(splits.val, limit_eval), cut(splits.test, limit_eval))


def channel_stats(images: torch.Tensor, idx: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of x/scale over the samples `idx`, every
    pixel of them, in float64 (two passes, in chunks of samples)."""
    c = images.shape[1]
    count = idx.numel() * images.shape[2] * images.shape[3]
    total = torch.zeros(c, dtype=torch.float64)
    for chunk in idx.split(4096):
        total += images[chunk].to(torch.float64).sum(dim=(0, 2, 3))
    mean = total / count
    sq = torch.zeros(c, dtype=torch.float64)
    for chunk in idx.split(4096):
        sq += (images[chunk].to(torch.float64) - mean.view(1, c, 1, 1)).square().sum(dim=(0, 2, 3))
    std = (sq / count).sqrt()
    return tuple(float(m) / scale for m in mean), tuple(float(s) / scale for s in std)


def _where(name: str, path: Path | str) -> str:
    return f"{name} dataset '{path}'"


def load_splits(cfg, data_dir: str | Path | None = None, *, allow_download: bool = True) -> Splits:
    """The splits of `cfg` (a DataConfig), on the CPU; `Splits.info` tells where the data came from
    (path, sha256) and how it is preprocessed.

    Normalisation: data.mean/data.std when given; else the dataset's default (DATASETS); else (svhn,
    arrays, folder) the per-channel mean and standard deviation of the training split (the training
    samples less the validation ones, before limit_train)."""
    name = cfg.dataset
    raw = load_source(
        name, data_dir, allow_download=allow_download, path=getattr(cfg, "path", ""), image_size=getattr(cfg, "image_size", ())
    )
    channels = int(raw.x_train.shape[1])
    if raw.flat and cfg.augment:
        raise DataError(
            f"{_where(name, raw.path)}: the samples are vectors (N×D, taken as 1×1×D), which data.augment (crops and "
            "flips of images) cannot apply to; set data.augment = false"
        )
    if cfg.mean:
        if len(cfg.mean) != channels:
            raise DataError(f"data.mean has {len(cfg.mean)} values but '{name}' has {channels} channels")
        mean, std, norm = tuple(cfg.mean), tuple(cfg.std), "config"
    elif name in DATASETS and DATASETS[name].mean:
        mean, std, norm = DATASETS[name].mean, DATASETS[name].std, "default"
    else:
        train_idx, _ = split_indices(int(raw.y_train.shape[0]), cfg.val_size, cfg.split_seed, name)
        mean, std = channel_stats(raw.x_train, train_idx, raw.scale)
        norm = "training split"
        for c, s in enumerate(std):
            if not s > 0:
                raise DataError(
                    f"{_where(name, raw.path)}: channel {c} is constant over the training split (standard deviation "
                    f"{s}); give data.mean and data.std"
                )
    size = tuple(getattr(cfg, "image_size", ()))
    info = DatasetInfo(
        name, tuple(int(d) for d in raw.x_train.shape[1:]), raw.n_classes, mean, std, scale=raw.scale, path=str(raw.path),
        sha256=digest(raw.path, raw.files), n_files=len(raw.files), flat=raw.flat,
        image_size=(size[0], size[-1]) if size and name == "folder" else (), classes=raw.classes, normalisation=norm,
    )
    return make_splits(
        info, raw.as_tuple(), val_size=cfg.val_size, split_seed=cfg.split_seed, limit_train=cfg.limit_train,
        limit_eval=cfg.limit_eval,
    )


# ------------------------------------------------------------------ provenance, checks of runs
def dataset_fingerprint(cfg, data_dir: str | Path | None = None, *, allow_download: bool = True) -> dict:
    """`DatasetInfo.fingerprint()` of the data `cfg` (a DataConfig) names, without decoding it where
    its files are on disk (else it is read as by `load_splits`: unpacked or downloaded)."""
    from neurohw.datasets import files

    name, root = cfg.dataset, resolve_data_dir(data_dir)
    found = None
    if name in FILE_DATASETS:
        path = files.resolve_path(name, getattr(cfg, "path", ""), root)
        if name == "arrays":
            found = path, (path,)
        else:
            train, test = files.list_folder(path)
            found = path, tuple(f for split in (train, test) for fs in split.values() for f in fs)
    elif name in DATASETS:
        found = _named_files(name, root)
        found = (found[0].resolve(), found[1]) if found is not None else None
    if found is None:
        raw = load_source(name, data_dir, allow_download=allow_download, path=getattr(cfg, "path", ""),
                          image_size=getattr(cfg, "image_size", ()))
        found = raw.path, raw.files
    return {"dataset": name, "path": str(found[0]), "sha256": digest(found[0], found[1]), "files": len(found[1])}


def check_fingerprint(stored: dict, current: dict, what: str = "the run") -> list[str]:
    """Refuse (DataError) data other than the data `stored` was taken of: another dataset or another
    sha256. Data that only moved (same sha256, another path) is accepted with a note, returned."""
    if stored.get("dataset") != current.get("dataset"):
        raise DataError(f"{what} was made with dataset '{stored.get('dataset')}', not '{current.get('dataset')}'")
    if stored.get("sha256") != current.get("sha256"):
        raise DataError(
            f"the data of dataset '{current.get('dataset')}' changed since {what} was made: sha256 {stored.get('sha256')} "
            f"of '{stored.get('path')}' then, {current.get('sha256')} of '{current.get('path')}' now; restore the data "
            "or start a new run"
        )
    if stored.get("path") != current.get("path"):
        return [f"dataset '{current.get('dataset')}' moved from '{stored.get('path')}' to '{current.get('path')}' (same sha256)"]
    return []


def check_net(info: DatasetInfo, net_cfg) -> None:
    """Refuse (ConfigError) a net that cannot take the data: a conv net on vectors."""
    if info.flat and net_cfg.architecture != "fc":
        raise ConfigError(
            f"{_where(info.name, info.path)} holds vectors (N×D, taken as 1×1×{info.input_shape[2]}), which only a dense "
            f"net takes: net.architecture = '{net_cfg.architecture}' needs images (N×C×H×W or N×H×W); use "
            "net.architecture = 'fc'"
        )


def describe_splits(splits: Splits, cfg) -> str:
    """The text of `neurohw data-info`: the resolved dataset, its splits, input, classes, normalisation
    and checksum (`cfg`: the DataConfig the splits were loaded with)."""
    info = splits.info
    rows = [f"dataset {info.name}: {info.path}"]
    rows.append(f"  sha256         {info.sha256} ({info.n_files} file{'s' if info.n_files != 1 else ''}"
                + (")" if info.n_files == 1 else ", of the manifest `sha256sum FILE… | sha256sum` in sorted order)"))
    limits = [f"{k} {getattr(cfg, k)}" for k in ("limit_train", "limit_eval") if getattr(cfg, k)]
    rows.append(
        f"  splits         train {len(splits.train)}, validation {len(splits.val)} (data.val_size {cfg.val_size}, "
        f"split_seed {cfg.split_seed}), test {len(splits.test)}" + (f"; {', '.join(limits)}" if limits else "")
    )
    c, h, w = info.input_shape
    kind = "uint8 pixels, divided by 255" if info.scale == 255.0 else f"{splits.train.images.dtype} values, taken as they are"
    if info.flat:
        rows.append(f"  input          vectors of {w} values ({kind}), taken as 1×1×{w}: dense nets only")
    else:
        resized = f", resized to {info.image_size[0]}×{info.image_size[1]} (bilinear)" if info.image_size else ""
        rows.append(f"  input          {c}×{h}×{w} images ({kind}{resized}); {c * h * w} inputs to a dense first layer")
    names = f": {', '.join(info.classes[:10])}{', …' if len(info.classes) > 10 else ''}" if info.classes else ""
    rows.append(f"  classes        {info.n_classes}{names}")
    source = {"default": "the dataset's default", "config": "data.mean and data.std",
              "training split": "computed on the training split"}[info.normalisation]
    fmt = lambda v: "[" + ", ".join(f"{x:.6g}" for x in v) + "]"
    x = "pixel/255" if info.scale == 255.0 else "x"
    rows.append(f"  normalisation  ({x} − mean)/std, mean {fmt(info.mean)}, std {fmt(info.std)} ({source})")
    return "\n".join(rows)


# ------------------------------------------------------------------------- batches, preprocessing
class Preprocess:
    """Images (B, C, H, W) → network input `(x/scale − mean)/std` of shape (B, *input_shape); scale 255
    for uint8 pixels, 1 for float images (DatasetInfo.scale)."""

    def __init__(self, info: DatasetInfo, input_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        c = info.input_shape[0]
        self.mean = torch.tensor(info.mean, device=device, dtype=dtype).view(1, c, 1, 1)
        self.std = torch.tensor(info.std, device=device, dtype=dtype).view(1, c, 1, 1)
        self.scale = float(info.scale)
        self.input_shape, self.dtype = tuple(input_shape), dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.float_images(images)
        return x.reshape(x.shape[0], *self.input_shape)

    def float_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images, still (B, C, H, W) (before augmentation); the same operations, in the
        same order, as NetworkSpec.preprocess, so that exported nets see bit-identical inputs."""
        return (images.to(self.dtype) / self.scale - self.mean) / self.std


@dataclass
class AugmentDraw:
    """Random flip and crop offsets for a batch (drawn for the global batch, sliced per process)."""

    flip: torch.Tensor  # bool (B,)
    top: torch.Tensor  # int64 (B,)
    left: torch.Tensor  # int64 (B,)

    def __getitem__(self, sl: slice) -> "AugmentDraw":
        return AugmentDraw(self.flip[sl], self.top[sl], self.left[sl])


def draw_augment(batch: int, padding: int, generator: torch.Generator) -> AugmentDraw:
    """Flip and crop offsets for `batch` images from `generator` (CPU: device-independent runs)."""
    flip = torch.rand(batch, generator=generator) < 0.5
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    return AugmentDraw(flip, top, left)


def augment(x: torch.Tensor, padding: int, draw: AugmentDraw) -> torch.Tensor:
    """Horizontal flip, then a crop of the edge-padded image, of a (B, C, H, W) batch."""
    b, c, h, w = x.shape
    dev = x.device
    x = torch.where(draw.flip.to(dev).view(b, 1, 1, 1), x.flip(3), x)
    if padding <= 0:
        return x
    xp = F.pad(x, (padding,) * 4, mode="replicate")
    rows = (draw.top.to(dev).view(b, 1) + torch.arange(h, device=dev)).view(b, 1, h, 1)
    cols = (draw.left.to(dev).view(b, 1) + torch.arange(w, device=dev)).view(b, 1, 1, w)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return xp[bi, ci, rows, cols]


def one_hot(labels: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, n_classes) one-hot targets, written by a scatter: unlike F.one_hot it does not read the
    labels' range back to the host, so a captured update can build its targets (a label outside
    [0, n_classes) raises on the CPU and trips a device assertion on CUDA)."""
    out = torch.zeros(labels.shape[0], n_classes, dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1.0)
