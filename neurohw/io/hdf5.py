"""Versioned HDF5 export and import of a NetworkSpec (format "neurohw", version 1; docs/hdf5.md).

Reading needs h5py and numpy only. Every dataset carries a `sha256` attribute of its bytes (C
order, the stored dtype); `load_spec` checks the schema, shapes, dtypes and checksums and raises
`SpecError` naming the file and the dataset or attribute at fault. `save_spec` writes a temporary
file next to the target and renames it, so an interrupted export leaves no file at the target path.

The file starts with a 512-byte HDF5 user block (ignored by HDF5 readers) holding the sha256 of every
byte after it. `load_spec` checks it before the HDF5 library parses anything: the C library can crash
on some byte-level damage, which then becomes a `SpecError` instead. A deliberate edit of an exported
file (with h5py) is accepted again after `stamp_file(path)`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurohw.core.activations import ACTIVATIONS
from neurohw.errors import SpecError
from neurohw.io.atomic import atomic_path
from neurohw.spec import (
    ARCHITECTURES, COSTS, LAYER_TYPES, NUDGES, POOLS, RELAXATIONS, ConductanceSpec, DeviceSpec, LayerSpec, NetworkSpec,
)

FORMAT = "neurohw"
FORMAT_VERSION = 1


USERBLOCK = 512
STAMP_MAGIC = b"neurohw-hdf5 sha256-after-userblock "


def sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _stamp_block(hexdigest: str) -> bytes:
    return (STAMP_MAGIC + hexdigest.encode("ascii") + b"\n").ljust(USERBLOCK, b"\0")


def _body_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(USERBLOCK)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_stamp(path: Path) -> None:
    block = _stamp_block(_body_sha256(path))
    with open(path, "r+b") as fh:
        fh.write(block)


def stamp_file(path: str | Path) -> Path:
    """Write the sha256 of the bytes after the user block into the user block (export does this)."""
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(len(STAMP_MAGIC)) != STAMP_MAGIC:
            raise SpecError(f"{path}: no neurohw user block to stamp (not written by neurohw export)")
    _write_stamp(path)
    return path


def _check_stamp(path: Path) -> None:
    """SpecError if the file carries a neurohw stamp that does not match its bytes."""
    with open(path, "rb") as fh:
        head = fh.read(USERBLOCK)
    if not head.startswith(STAMP_MAGIC):
        return  # not stamped (another writer, or a damaged magic): the HDF5 checks below apply
    raw = head[len(STAMP_MAGIC): len(STAMP_MAGIC) + 64]
    if len(head) < USERBLOCK or not all(c in b"0123456789abcdef" for c in raw) or head != _stamp_block(raw.decode("ascii")):
        raise SpecError(f"{path}: damaged file: its 512-byte user block is not a valid neurohw stamp")
    digest = raw.decode("ascii")
    if _body_sha256(path) != digest:
        raise SpecError(
            f"{path}: damaged or modified file: the sha256 of its bytes after the user block differs from the one "
            "written at export (after a deliberate edit, neurohw.io.hdf5.stamp_file re-stamps it)"
        )


# ------------------------------------------------------------------------------------- writing
def _dataset(group, name: str, arr: np.ndarray, units: str | None = None, doc: str | None = None):
    arr = np.ascontiguousarray(arr)
    ds = group.create_dataset(name, data=arr)
    ds.attrs["sha256"] = sha256(arr)
    if units:
        ds.attrs["units"] = units
    if doc:
        ds.attrs["doc"] = doc
    return ds


def save_spec(spec: NetworkSpec, path: str | Path, *, neurohw_version: str | None = None) -> Path:
    """Write `spec` to `path` (atomically) in format version 1."""
    import h5py

    from neurohw import __version__

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["neurohw_version"] = neurohw_version or __version__
            f.attrs["created_utc"] = spec.provenance.get("created_utc") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.attrs["config_toml"] = spec.config_toml
            f.attrs["algorithm"] = spec.algorithm
            f.attrs["test_error"] = float(spec.test_error)
            f.attrs["val_error"] = float(spec.val_error)
            f.attrs["seed"] = int(spec.seed)
            net = f.create_group("network")
            net.attrs.update(
                {
                    "architecture": spec.architecture,
                    "activation": spec.activation,
                    "cost": spec.cost,
                    "nudge": spec.nudge,
                    "T_free": int(spec.T_free),
                    "T_nudge": int(spec.T_nudge),
                    "relaxation": spec.relaxation,
                    "beta": float(spec.beta),
                    "input_shape": np.asarray(spec.input_shape, dtype=np.int64),
                    "image_shape": np.asarray(spec.image_shape, dtype=np.int64),
                    "input_mean": np.asarray(spec.input_mean, dtype=np.float64),
                    "input_std": np.asarray(spec.input_std, dtype=np.float64),
                    "pixel_scale": float(spec.pixel_scale),
                    "dataset_json": json.dumps(spec.dataset, sort_keys=True),
                    "input_doc": "network input = (image/pixel_scale - input_mean[c]) / input_std[c], flattened in C order for a dense first layer",
                }
            )
            layers = net.create_group("layers")
            for i, ls in enumerate(spec.layers):
                g = layers.create_group(f"{i:02d}")
                g.attrs["type"] = ls.type
                g.attrs["in_shape"] = np.asarray(ls.in_shape, dtype=np.int64)
                g.attrs["out_shape"] = np.asarray(ls.out_shape, dtype=np.int64)
                g.attrs["readout"] = bool(ls.readout)
                if ls.type == "conv2d":
                    g.attrs["stride"] = int(ls.stride)
                    g.attrs["padding"] = int(ls.padding)
                    g.attrs["pool"] = ls.pool
                _dataset(g, "weight", ls.weight.astype(np.float32), doc="pre-activation weight @ s_in + bias" if ls.type == "dense" else "conv2d kernel (out_ch, in_ch, kh, kw)")
                _dataset(g, "bias", ls.bias.astype(np.float32))
                if ls.weight_backward is not None:
                    _dataset(g, "weight_backward", ls.weight_backward.astype(np.float32), doc="untied feedback: s_in += s_out @ weight_backward")
                if ls.conductance is not None:
                    c = ls.conductance
                    cg = g.create_group("conductance")
                    cg.attrs["g_min_uS"] = float(c.g_min_uS)
                    cg.attrs["g_max_uS"] = float(c.g_max_uS)
                    cg.attrs["scale_uS_per_unit"] = float(c.scale_uS_per_unit)
                    cg.attrs["doc"] = "weight = (g_plus_uS - g_minus_uS) / scale_uS_per_unit"
                    _dataset(cg, "g_plus_uS", c.g_plus_uS.astype(np.float32), units="uS")
                    _dataset(cg, "g_minus_uS", c.g_minus_uS.astype(np.float32), units="uS")
                    if c.levels is not None:
                        _dataset(cg, "levels", c.levels.astype(np.int16), doc="programmed level index of (g_plus, g_minus), axis 0")
                    if c.stuck_mask is not None:
                        _dataset(cg, "stuck_mask", c.stuck_mask.astype(np.uint8), doc="(g_plus, g_minus) on axis 0: 0 ok, 1 stuck at g_min, 2 stuck at g_max")
            if spec.device is not None:
                dg = f.create_group("device")
                dg.attrs["model"] = spec.device.model
                dg.attrs["params_json"] = json.dumps(spec.device.params, sort_keys=True)
            f.attrs["datasets"] = "\n".join(_dataset_paths(f))
        _write_stamp(Path(tmp))
    return path


def _dataset_paths(f) -> list[str]:
    """Every dataset of the file, sorted: the manifest that `load_spec` compares against."""
    paths: list[str] = []
    f.visititems(lambda name, obj: paths.append(name) if hasattr(obj, "dtype") else None)
    return sorted(paths)


# ------------------------------------------------------------------------------------- reading
class _Reader:
    """Reads one file, raising SpecError with the file and the object at fault."""

    def __init__(self, path: Path, f):
        self.path, self.f = path, f

    def fail(self, where: str, problem: str) -> SpecError:
        return SpecError(f"{self.path}: {where}: {problem}")

    def attr(self, obj, name: str, kind: type | tuple, choices: tuple | None = None) -> Any:
        where = f"{obj.name} attribute '{name}'"
        if name not in obj.attrs:
            raise self.fail(where, "missing")
        value = obj.attrs[name]
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if kind is tuple:
            arr = np.asarray(value)
            if arr.ndim != 1:
                raise self.fail(where, f"expected a 1-d array, got {value!r}")
            return tuple(arr.tolist())
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is bool and isinstance(value, (np.bool_, int)):
            value = bool(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(where, f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(where, f"'{value}' is not one of {', '.join(map(str, choices))}")
        return value

    def dataset(self, group, name: str, dtype: np.dtype, shape: tuple | None = None, optional: bool = False):
        where = f"{group.name}/{name}"
        if name not in group:
            if optional:
                return None
            raise self.fail(where, "missing dataset")
        ds = group[name]
        if not hasattr(ds, "dtype"):
            raise self.fail(where, "is a group, expected a dataset")
        if ds.dtype != np.dtype(dtype):
            raise self.fail(where, f"dtype {ds.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and tuple(ds.shape) != tuple(shape):
            raise self.fail(where, f"shape {tuple(ds.shape)}, expected {tuple(shape)}")
        arr = ds[()]
        want = ds.attrs.get("sha256")
        if isinstance(want, bytes):
            want = want.decode()
        if want is None:
            raise self.fail(where, "no sha256 attribute")
        if sha256(arr) != want:
            raise self.fail(where, "checksum mismatch (sha256 of the data differs from its 'sha256' attribute)")
        return arr

    def group(self, parent, name: str):
        if name not in parent:
            raise self.fail(f"{parent.name.rstrip('/')}/{name}", "missing group")
        g = parent[name]
        if hasattr(g, "dtype"):
            raise self.fail(g.name, "is a dataset, expected a group")
        return g


def _expected_weight_shape(ls_type: str, in_shape: tuple, out_shape: tuple, kernel: tuple | None) -> tuple:
    if ls_type == "dense":
        return (out_shape[0], int(np.prod(in_shape)))
    return (out_shape[0], in_shape[0], *kernel)


def _dataset_record(r: "_Reader", net) -> dict[str, Any]:
    """The /network attribute 'dataset_json' (absent in files written before it: {})."""
    if "dataset_json" not in net.attrs:
        return {}
    try:
        value = json.loads(r.attr(net, "dataset_json", str))
    except json.JSONDecodeError as e:
        raise r.fail("/network attribute 'dataset_json'", f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise r.fail("/network attribute 'dataset_json'", f"expected a JSON object, got {value!r}")
    return value


def load_spec(path: str | Path) -> NetworkSpec:
    """Read and validate a neurohw HDF5 file; SpecError names the file and what is wrong."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such file")
    try:
        _check_stamp(path)
    except OSError as e:
        raise SpecError(f"{path}: cannot be read: {e}") from None
    try:
        ok = h5py.is_hdf5(path)
    except Exception as e:
        raise SpecError(f"{path}: cannot be read: {e}") from None
    if not ok:
        raise SpecError(f"{path}: not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            return _read(_Reader(path, f))
    except SpecError:
        raise
    except Exception as e:  # a truncated or damaged file makes h5py raise many kinds of errors
        raise SpecError(f"{path}: damaged HDF5 file ({type(e).__name__}: {e})") from None


def _read(r: _Reader) -> NetworkSpec:
    f = r.f
    fmt = r.attr(f, "format", str)
    if fmt != FORMAT:
        raise r.fail("/ attribute 'format'", f"'{fmt}', expected '{FORMAT}'")
    version = r.attr(f, "format_version", int)
    if version != FORMAT_VERSION:
        raise r.fail("/ attribute 'format_version'", f"{version} is not supported (this neurohw reads version {FORMAT_VERSION})")
    manifest = r.attr(f, "datasets", str).split("\n")
    present = _dataset_paths(f)
    if present != manifest:
        missing = sorted(set(manifest) - set(present))
        extra = sorted(set(present) - set(manifest))
        raise r.fail("/ attribute 'datasets'", f"the file's datasets differ from its manifest: missing {missing}, unexpected {extra}")
    net = r.group(f, "network")
    input_shape = r.attr(net, "input_shape", tuple)
    layers_group = r.group(net, "layers")
    names = sorted(layers_group.keys())
    if not names or names != [f"{i:02d}" for i in range(len(names))]:
        raise r.fail(layers_group.name, f"layer groups must be named 00, 01, … in order, found {names}")
    layers = []
    shape = input_shape
    for name in names:
        g = r.group(layers_group, name)
        ls_type = r.attr(g, "type", str, LAYER_TYPES)
        in_shape = r.attr(g, "in_shape", tuple)
        out_shape = r.attr(g, "out_shape", tuple)
        if tuple(in_shape) != tuple(shape):
            raise r.fail(f"{g.name} attribute 'in_shape'", f"{in_shape} does not follow the previous layer's output {shape}")
        readout = r.attr(g, "readout", bool)
        stride, padding, pool, kernel = 1, 0, "none", None
        if ls_type == "conv2d":
            stride = r.attr(g, "stride", int)
            padding = r.attr(g, "padding", int)
            pool = r.attr(g, "pool", str, POOLS)
            if "weight" in g and hasattr(g["weight"], "shape") and len(g["weight"].shape) == 4:
                kernel = tuple(g["weight"].shape[2:])
            else:
                raise r.fail(f"{g.name}/weight", "a conv2d layer needs a 4-d weight (out_ch, in_ch, kh, kw)")
        w_shape = _expected_weight_shape(ls_type, in_shape, out_shape, kernel)
        weight = r.dataset(g, "weight", np.float32, w_shape)
        bias = r.dataset(g, "bias", np.float32, (out_shape[0],))
        wb = r.dataset(g, "weight_backward", np.float32, w_shape, optional=True)
        conductance = None
        if "conductance" in g:
            cg = r.group(g, "conductance")
            g_plus = r.dataset(cg, "g_plus_uS", np.float32, w_shape)
            g_minus = r.dataset(cg, "g_minus_uS", np.float32, w_shape)
            levels = r.dataset(cg, "levels", np.int16, (2, *w_shape), optional=True)
            stuck = r.dataset(cg, "stuck_mask", np.uint8, (2, *w_shape), optional=True)
            g_min, g_max = r.attr(cg, "g_min_uS", float), r.attr(cg, "g_max_uS", float)
            scale = r.attr(cg, "scale_uS_per_unit", float)
            if not (0 <= g_min < g_max) or not scale > 0:
                raise r.fail(cg.name, f"needs 0 ≤ g_min_uS < g_max_uS and scale_uS_per_unit > 0, got {g_min}, {g_max}, {scale}")
            conductance = ConductanceSpec(g_plus, g_minus, g_min, g_max, scale, levels, stuck)
            w_eff = conductance.effective_weight()
            if not np.allclose(weight, w_eff, rtol=0.0, atol=1e-6 * max(1.0, float(np.abs(w_eff).max(initial=0.0)))):
                raise r.fail(f"{g.name}/weight", "differs from (g_plus_uS − g_minus_uS)/scale_uS_per_unit; re-import the conductances")
        layers.append(LayerSpec(ls_type, tuple(in_shape), tuple(out_shape), weight, bias, stride, padding, pool, readout, wb, conductance))
        shape = out_shape
    mapped = [ls.conductance is not None for ls in layers]
    if ("device" in f) != all(mapped) or (any(mapped) and not all(mapped)):
        raise r.fail("/device", "a device mapping needs the /device group and a conductance group in every layer")
    device = None
    if "device" in f:
        dg = r.group(f, "device")
        try:
            params = json.loads(r.attr(dg, "params_json", str))
        except json.JSONDecodeError as e:
            raise r.fail("/device attribute 'params_json'", f"not valid JSON: {e}") from None
        device = DeviceSpec(r.attr(dg, "model", str), params)
    test_error = r.attr(f, "test_error", float)
    val_error = r.attr(f, "val_error", float)
    return NetworkSpec(
        architecture=r.attr(net, "architecture", str, ARCHITECTURES),
        activation=r.attr(net, "activation", str, tuple(ACTIVATIONS.names())),
        cost=r.attr(net, "cost", str, COSTS),
        nudge=r.attr(net, "nudge", str, NUDGES),
        T_free=r.attr(net, "T_free", int),
        T_nudge=r.attr(net, "T_nudge", int),
        relaxation=r.attr(net, "relaxation", str, RELAXATIONS) if "relaxation" in net.attrs else "sync",  # files before it: sync
        beta=r.attr(net, "beta", float),
        input_shape=tuple(input_shape),
        image_shape=tuple(r.attr(net, "image_shape", tuple)),
        input_mean=tuple(r.attr(net, "input_mean", tuple)),
        input_std=tuple(r.attr(net, "input_std", tuple)),
        pixel_scale=r.attr(net, "pixel_scale", float) if "pixel_scale" in net.attrs else 255.0,  # files before it: pixels
        dataset=_dataset_record(r, net),
        layers=tuple(layers),
        config_toml=r.attr(f, "config_toml", str),
        algorithm=r.attr(f, "algorithm", str),
        test_error=test_error if math.isfinite(test_error) else math.nan,
        val_error=val_error if math.isfinite(val_error) else math.nan,
        seed=r.attr(f, "seed", int),
        device=device,
        provenance={"neurohw_version": r.attr(f, "neurohw_version", str), "created_utc": r.attr(f, "created_utc", str)},
    )
