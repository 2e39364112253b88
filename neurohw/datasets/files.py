"""Your own data: `data.dataset = "arrays"` (one .npz or HDF5 file) and `"folder"` (an image folder).

arrays: the arrays x_train, y_train, x_test, y_test of an .npz file (numpy.savez) or of the root group
of an HDF5 file (the format is told by the file's first bytes, not its name). Images are N×C×H×W or
N×H×W; uint8 pixels are divided by 255 in preprocessing, float16/32/64 values are taken as they are
(float16 widened to float32); N×D arrays are vectors, taken as 1×1×D images (dense nets only, no
augmentation). Labels are integers 0 … K−1, K = 1 + the largest training label.

folder: `train/<class>/<image>` and `test/<class>/<image>` (torchvision's ImageFolder layout; PNG,
JPEG, BMP, GIF, TIFF, WebP, PPM/PGM; class folders and images in sorted order, subfolders of a class
included, hidden files skipped). The classes are the training split's folder names, sorted; a test
class must be one of them. Images are 8-bit grey (one channel) if every image is grey, else RGB
(a grey image then has three equal channels; alpha is dropped); resized to `data.image_size`
(bilinear, PIL's antialiasing when shrinking) or, without it, all of one size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurohw.datasets.common import RawData, check_images, check_labels, one_line, to_tensor
from neurohw.errors import DataError

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def resolve_path(dataset: str, path: str, data_dir: Path) -> Path:
    """`path` if absolute; else `<data_dir>/<path>` if it exists, else `./<path>` (the working directory)."""
    if not path:
        raise DataError(f"dataset '{dataset}' needs data.path (the {'.npz or HDF5 file' if dataset == 'arrays' else 'folder'})")
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path(data_dir) / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    raise DataError(
        f"{dataset} dataset: data.path = '{path}' does not exist; looked for "
        + " and ".join(f"'{c}'" for c in candidates)
        + ("" if p.is_absolute() else " (a relative path resolves against the data directory, else the working directory)")
    )


# ------------------------------------------------------------------------------------- arrays
def _read_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{where}: cannot open it as an .npz file: {one_line(e)}") from None
    out = {}
    with archive:
        for key in ARRAY_KEYS:
            if key not in archive.files:
                raise DataError(
                    f"{where}: no array '{key}' (the file holds: {', '.join(archive.files) or 'nothing'}); "
                    f"an arrays dataset needs {', '.join(ARRAY_KEYS)}"
                )
            try:
                out[key] = archive[key]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise DataError(f"{where}: array '{key}' holds Python objects (dtype object); it must hold numbers") from None
                raise DataError(f"{where}: array '{key}' is unreadable: {one_line(e)}") from None
            except Exception as e:  # zipfile.BadZipFile (CRC), zlib.error, EOFError, OSError
                raise DataError(f"{where}: array '{key}' is unreadable: {one_line(e)}") from None
    return out


def _read_hdf5(path: Path, where: str) -> dict[str, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise DataError(f"{where}: cannot open it as an HDF5 file: {one_line(e)}") from None
    out = {}
    with f:
        for key in ARRAY_KEYS:
            if key not in f:
                raise DataError(
                    f"{where}: no array '{key}' at the file's root (it holds: {', '.join(f.keys()) or 'nothing'}); "
                    f"an arrays dataset needs {', '.join(ARRAY_KEYS)}"
                )
            obj = f[key]
            if not isinstance(obj, h5py.Dataset):
                raise DataError(f"{where}: '{key}' is an HDF5 group, not an array")
            try:
                out[key] = np.asarray(obj[()])
            except Exception as e:  # OSError: a damaged chunk or filter
                raise DataError(f"{where}: array '{key}' is unreadable: {one_line(e)}") from None
    return out


def read_arrays(path: Path) -> RawData:
    """The arrays dataset of an .npz or HDF5 file, every array checked (module doc)."""
    where = f"arrays dataset '{path}'"
    if path.is_dir():
        raise DataError(f"{where}: is a folder; data.path of an arrays dataset is one .npz or HDF5 file (a folder of images: data.dataset = 'folder')")
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        raise DataError(f"{where}: cannot read it: {one_line(e)}") from None
    if magic.startswith(_NPZ_MAGIC):
        arrays = _read_npz(path, where)
    elif magic == _HDF5_MAGIC:
        arrays = _read_hdf5(path, where)
    else:
        raise DataError(f"{where}: neither an .npz (zip) nor an HDF5 file (it starts with {magic!r})")

    xs = {}
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.ndim not in (2, 3, 4):
            raise DataError(f"{where}: array '{key}' has shape {x.shape}; images are N×C×H×W or N×H×W, vectors N×D")
        if x.shape[0] == 0 or 0 in x.shape:
            raise DataError(f"{where}: array '{key}' has shape {x.shape}: no samples")
        xs[key] = check_images(where, key, x)
    x_train, x_test = xs["x_train"], xs["x_test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{where}: array 'x_test' holds samples of shape {x_test.shape[1:]} but 'x_train' of shape {x_train.shape[1:]}"
        )
    if (x_train.dtype == np.uint8) != (x_test.dtype == np.uint8):
        raise DataError(
            f"{where}: array 'x_train' has dtype {x_train.dtype} but 'x_test' {x_test.dtype}: both uint8 (pixels, "
            "divided by 255) or both float (taken as they are)"
        )
    if x_test.dtype != x_train.dtype:  # float32 and float64: the test split takes the training split's
        x_test = x_test.astype(x_train.dtype)
    y_train = check_labels(where, "y_train", arrays["y_train"], x_train.shape[0])
    n_classes = int(y_train.max()) + 1
    if n_classes < 2:
        raise DataError(f"{where}: array 'y_train' holds only the label 0; a classifier needs at least two classes")
    y_test = check_labels(where, "y_test", arrays["y_test"], x_test.shape[0], n_classes, "y_train's classes")

    flat = x_train.ndim == 2
    as_images = lambda x: x[:, None, None, :] if flat else x[:, None] if x.ndim == 3 else x
    return RawData(
        to_tensor(as_images(x_train)), to_tensor(y_train), to_tensor(as_images(x_test)), to_tensor(y_test),
        path=path, files=(path,), n_classes=n_classes, flat=flat,
    )


# ------------------------------------------------------------------------------------- folder
def _class_files(root: Path, split: str) -> dict[str, list[Path]]:
    where = f"folder dataset '{root}'"
    d = root / split
    if not d.is_dir():
        raise DataError(f"{where}: no folder '{split}/' (the layout is {split}/<class>/<image>, as torchvision's ImageFolder)")
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{where}: '{split}/' holds no class folders (the layout is {split}/<class>/<image>)")
    out = {}
    for c in classes:
        files = sorted(
            f for f in (d / c).rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(d / c).parts)
        )
        if not files:
            raise DataError(f"{where}: class folder '{split}/{c}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        out[c] = files
    return out


def list_folder(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The image files of the training and test splits of a folder dataset, per class."""
    train, test = _class_files(root, "train"), _class_files(root, "test")
    extra = sorted(set(test) - set(train))
    if extra:
        raise DataError(
            f"folder dataset '{root}': the test classes {', '.join(extra)} have no folder in 'train/' "
            f"(the training classes are {', '.join(train)})"
        )
    return train, test


_GREY = ("1", "L", "LA")
_COLOUR = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def _decode(root: Path, f: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(f) as im:
            im.load()
            if im.mode in _GREY:
                im = im.convert("L")
            elif im.mode in _COLOUR:
                im = im.convert("RGB")
            else:
                raise DataError(
                    f"folder dataset '{root}': image '{f.relative_to(root)}' has mode {im.mode} (16-bit or float "
                    "pixels); store it as 8-bit grey or RGB"
                )
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), SyntaxError (bad header)
        raise DataError(f"folder dataset '{root}': image '{f.relative_to(root)}' is unreadable: {one_line(e)}") from None


def read_folder(root: Path, image_size: tuple[int, ...] = ()) -> RawData:
    """The folder dataset at `root` (module doc), resized to image_size ((H, W), (S,) for S×S, () for none)."""
    if not root.is_dir():
        raise DataError(f"folder dataset '{root}': is not a folder (the layout is train/<class>/<image>, test/<class>/<image>)")
    train, test = list_folder(root)
    classes = tuple(train)
    index = {c: i for i, c in enumerate(classes)}
    size = None if not image_size else (int(image_size[0]), int(image_size[-1]))
    first: tuple[Path, tuple[int, int]] | None = None
    out = []
    for split in (train, test):
        images, labels = [], []
        for c, files in split.items():
            for f in files:
                a = _decode(root, f, size)
                if first is None:
                    first = (f, a.shape[:2])
                elif a.shape[:2] != first[1]:
                    raise DataError(
                        f"folder dataset '{root}': image '{f.relative_to(root)}' is {a.shape[0]}×{a.shape[1]} but "
                        f"'{first[0].relative_to(root)}' is {first[1][0]}×{first[1][1]}; set data.image_size to resize them all"
                    )
                images.append(a)
                labels.append(index[c])
        out.append((images, labels))
    colour = any(a.ndim == 3 for images, _ in out for a in images)

    def stack(images: list[np.ndarray]) -> np.ndarray:
        if colour:
            images = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in images]
            return np.stack(images).transpose(0, 3, 1, 2)
        return np.stack(images)[:, None]

    (tr_x, tr_y), (te_x, te_y) = out
    files = tuple(f for split in (train, test) for fs in split.values() for f in fs)
    return RawData(
        to_tensor(stack(tr_x)), to_tensor(np.asarray(tr_y, np.int64)), to_tensor(stack(te_x)), to_tensor(np.asarray(te_y, np.int64)),
        path=root, files=files, n_classes=len(classes), classes=classes,
    )
