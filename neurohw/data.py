"""Datasets, data-directory resolution, train/validation/test splits, batches and augmentation.

Data directory: `--data-dir`, else `$NEUROHW_DATA`, else `./data`, else the `data/` folder of the
source checkout (which holds the four MNIST files, committed). For MNIST and Fashion-MNIST the
gzipped IDX files in `<dir>/mnist/` (`<dir>/fashion_mnist/`) are unpacked once into torchvision's raw
layout `<dir>/MNIST/raw/` (or a user cache when `<dir>` is read-only) and read by torchvision. A
dataset that is missing is downloaded by torchvision when the network allows (not when
`NEUROHW_OFFLINE=1`); otherwise a DataError names every file looked for and where.

Images stay uint8 on the training device; `Preprocess` turns a batch into the network input
`(pixel/255 − mean)/std` (per channel), flattened in C order for a dense first layer.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from neurohw.errors import DataError

CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.0,), (1.0,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 10, (0.0,), (1.0,)),
    # Laborieux et al. 2021 normalise CIFAR-10 by three standard deviations
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)),
}

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


def load_raw(name: str, data_dir: str | Path | None = None, *, allow_download: bool = True) -> tuple[torch.Tensor, ...]:
    """(train_images, train_labels, test_images, test_labels): uint8 (N, C, H, W) and int64 (N,)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; valid: {', '.join(DATASETS)}")
    root = resolve_data_dir(data_dir)
    if name == "cifar10":
        return _load_cifar10(root, allow_download)
    return _load_idx(name, root, allow_download)


# ----------------------------------------------------------------------------------- splits
@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
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
    n = int(y_train.shape[0])
    if not 0 <= val_size < n:
        raise DataError(f"data.val_size = {val_size} must lie in [0, {n}) for dataset '{info.name}'")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
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
    is on no machine of the project); seeded, on the CPU."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, *info.input_shape), generator=g, dtype=torch.uint8)
        return Split(images, torch.randint(0, info.n_classes, (n,), generator=g))

    return Splits(info, split(n_train), split(n_val), split(n_test))


def limit_splits(splits: Splits, limit_train: int = 0, limit_eval: int = 0) -> Splits:
    """The first `limit_train` training and `limit_eval` validation/test samples (0: all)."""
    cut = lambda s, n: Split(s.images[:n], s.labels[:n]) if n and n < len(s) else s
    return Splits(splits.info, cut(splits.train, limit_train), cut(splits.val, limit_eval), cut(splits.test, limit_eval))


def load_splits(cfg, data_dir: str | Path | None = None, *, allow_download: bool = True) -> Splits:
    """The splits of `cfg` (a DataConfig), on the CPU."""
    info = DATASETS[cfg.dataset]
    if cfg.mean:
        if len(cfg.mean) != info.input_shape[0]:
            raise DataError(f"data.mean has {len(cfg.mean)} values but '{info.name}' has {info.input_shape[0]} channels")
        info = DatasetInfo(info.name, info.input_shape, info.n_classes, tuple(cfg.mean), tuple(cfg.std))
    raw = load_raw(cfg.dataset, data_dir, allow_download=allow_download)
    return make_splits(
        info, raw, val_size=cfg.val_size, split_seed=cfg.split_seed, limit_train=cfg.limit_train, limit_eval=cfg.limit_eval
    )


# ------------------------------------------------------------------------- batches, preprocessing
class Preprocess:
    """uint8 images (B, C, H, W) → network input `(pixel/255 − mean)/std` of shape (B, *input_shape)."""

    def __init__(self, info: DatasetInfo, input_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        c = info.input_shape[0]
        self.mean = torch.tensor(info.mean, device=device, dtype=dtype).view(1, c, 1, 1)
        self.std = torch.tensor(info.std, device=device, dtype=dtype).view(1, c, 1, 1)
        self.input_shape, self.dtype = tuple(input_shape), dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.float_images(images)
        return x.reshape(x.shape[0], *self.input_shape)

    def float_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images, still (B, C, H, W) (before augmentation); the same operations, in the
        same order, as NetworkSpec.preprocess, so that exported nets see bit-identical inputs."""
        return (images.to(self.dtype) / 255.0 - self.mean) / self.std


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
