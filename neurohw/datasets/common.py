"""What every loader returns (`RawData`), the checks of images and labels, and the sha256 digests.

Errors are one line: `DataError("<dataset> '<file>': <array>: <what is wrong>")`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neurohw.errors import DataError

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class RawData:
    """A dataset as read from disk, before the train/validation split.

    Images are (N, C, H, W): uint8 pixels (divided by 255 in preprocessing) or float32/float64 values
    taken as they are (`scale` 1); labels int64 in 0 … n_classes − 1. `files` are the files read,
    `path` the file or folder they lie in (the digest of `files`: `digest`)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    path: Path
    files: tuple[Path, ...]
    n_classes: int
    classes: tuple[str, ...] = ()
    flat: bool = False  # the file held (N, D) vectors, taken as 1×1×D images

    @property
    def scale(self) -> float:
        return 255.0 if self.x_train.dtype == torch.uint8 else 1.0

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return self.x_train, self.y_train, self.x_test, self.y_test


def one_line(e: BaseException) -> str:
    """An exception's message on one line (h5py and zipfile messages may span several)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ------------------------------------------------------------------------------------- checks
def check_images(where: str, key: str, x: np.ndarray) -> np.ndarray:
    """`x` as uint8 or float32/float64 images or vectors; DataError naming `where` and `key` for a
    wrong dtype or a non-finite value (float16 is widened to float32)."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.type in FLOAT_DTYPES:
        x = x.astype(np.float32) if x.dtype == np.float16 else x
        finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1) if x.size else np.ones(0, bool)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{where}: array '{key}': sample {i} holds NaN or infinite values ({int((~finite).sum())} samples do)")
        return x
    raise DataError(
        f"{where}: array '{key}' has dtype {x.dtype}; images must be uint8 (pixels 0…255, divided by 255) "
        "or float16/float32/float64 (taken as they are)"
    )


def check_labels(
    where: str, key: str, y: np.ndarray, n: int, n_classes: int | None = None, classes_of: str = ""
) -> np.ndarray:
    """`y` as int64 labels of `n` samples in 0 … n_classes − 1 (n_classes None: any ≥ 0; `classes_of`
    says where n_classes comes from, for the message)."""
    if y.ndim != 1:
        raise DataError(f"{where}: array '{key}' has shape {y.shape}; labels must be one integer per sample, shape ({n},)")
    if not (np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.bool_)):
        raise DataError(f"{where}: array '{key}' has dtype {y.dtype}; labels must be integers 0 … K−1")
    if y.shape[0] != n:
        raise DataError(f"{where}: array '{key}' has {y.shape[0]} labels but there are {n} samples")
    y = y.astype(np.int64)
    if y.size:
        bad = (y < 0) if n_classes is None else ((y < 0) | (y >= n_classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            valid = "≥ 0" if n_classes is None else f"in 0 … {n_classes - 1}" + (f" ({classes_of})" if classes_of else "")
            raise DataError(f"{where}: array '{key}': label {int(y[i])} of sample {i} is not {valid}")
    return y


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """A tensor owning a C-contiguous, writable copy (or the array itself when it already is one)."""
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


# ------------------------------------------------------------------------------------ digests
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The sha256 of a file (as `sha256sum` prints it), remembered per (path, size, mtime) in this process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _relative(f: Path, path: Path) -> str:
    """`f` relative to `path` (as written, else with symbolic links resolved), POSIX separators."""
    try:
        return Path(os.path.abspath(f)).relative_to(os.path.abspath(path)).as_posix()
    except ValueError:
        return f.resolve().relative_to(path.resolve()).as_posix()


def digest(path: Path, files: tuple[Path, ...]) -> str:
    """The sha256 of the data: of the file itself when `path` is that one file; else of the manifest
    of the files, one line `<sha256>  <path relative to path>` each, sorted by that relative path (POSIX
    separators) — what `cd PATH && sha256sum FILE… | sha256sum` prints for the files in that order."""
    if len(files) == 1 and Path(files[0]).resolve() == Path(path).resolve():
        return file_sha256(path)
    rel = sorted((_relative(Path(f), Path(path)), f) for f in files)
    manifest = "".join(f"{file_sha256(f)}  {r}\n" for r, f in rel)
    return hashlib.sha256(manifest.encode()).hexdigest()
