"""Weights → differential pairs of conductances (docs/hdf5.md §Device mapping).

Per layer, as aihwkit's single-pair converter:

    scale = (g_max − g_min) / max|W|
    g± = g_min + clip(±W·scale, 0, g_max − g_min)                       (eq. map)

optionally quantised to `n_levels` evenly spaced conductances in [g_min, g_max] (the nearest level;
`levels` records each device's index), and with stuck devices: each device is stuck with probability
`corrupt_devices_prob`, at g_max with probability `stuck_at_max_prob` and else at g_min, drawn from a
generator seeded by the profile. The effective weight is W = (g+ − g−)/scale.

Measured conductances (`import_conductances`) replace g± when they lie in [g_min, g_max] widened by
a measurement tolerance of MEASURED_TOLERANCE = 5 % of the span g_max − g_min (never below 0); values
beyond it are refused, or clipped to [g_min, g_max] on request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from neurohw.config import build_dataclass, read_toml
from neurohw.errors import ConfigError
from neurohw.spec import ConductanceSpec, DeviceSpec, NetworkSpec


@dataclass(frozen=True)
class DeviceProfile:
    model: str = field(default="ideal", metadata={"doc": "name of the device family (ideal, ReRAM, PCM, …)"})
    g_min_uS: float = field(default=0.0, metadata={"doc": "lowest programmable conductance, µS"})
    g_max_uS: float = field(default=25.0, metadata={"doc": "highest programmable conductance, µS"})
    n_levels: int = field(default=0, metadata={"doc": "evenly spaced programmable conductances (0: continuous)"})
    corrupt_devices_prob: float = field(default=0.0, metadata={"doc": "probability that a device is stuck"})
    stuck_at_max_prob: float = field(default=0.5, metadata={"doc": "probability that a stuck device is stuck at g_max (else g_min)"})
    seed: int = field(default=0, metadata={"doc": "seed of the stuck-device draw"})

    def __post_init__(self) -> None:
        if not (0.0 <= self.g_min_uS < self.g_max_uS):
            raise ConfigError(f"device.g_min_uS and device.g_max_uS need 0 ≤ g_min < g_max, got {self.g_min_uS} and {self.g_max_uS}")
        if self.n_levels < 0 or self.n_levels == 1 or self.n_levels > 32767:
            raise ConfigError(f"device.n_levels must be 0 (continuous) or 2 … 32767, got {self.n_levels}")
        for key in ("corrupt_devices_prob", "stuck_at_max_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"device.{key} must lie in [0, 1], got {getattr(self, key)}")


def load_profile(path: str | Path) -> DeviceProfile:
    """The [device] table of a profile TOML (sims/*.toml); errors name the file and the key."""
    table = read_toml(path, "device profile")
    if "device" not in table:
        raise ConfigError(f"device profile '{path}' has no [device] table")
    try:
        return build_dataclass(DeviceProfile, table["device"], "device.", [f"device.{k}" for k in DeviceProfile.__dataclass_fields__])
    except ConfigError as e:
        raise ConfigError(f"{e} in '{path}'") from None


def map_weight(w: np.ndarray, profile: DeviceProfile, rng: np.random.Generator) -> ConductanceSpec:
    """The conductances of one layer's weight matrix (eq. map)."""
    w = np.asarray(w, dtype=np.float64)
    span = profile.g_max_uS - profile.g_min_uS
    w_max = float(np.abs(w).max()) if w.size else 0.0
    scale = span / w_max if w_max > 0 else span
    g = np.stack([np.clip(w * scale, 0.0, span), np.clip(-w * scale, 0.0, span)])  # above g_min
    levels = None
    if profile.n_levels:
        step = span / (profile.n_levels - 1)
        levels = np.rint(g / step).astype(np.int16)
        g = levels * step
    stuck = None
    if profile.corrupt_devices_prob > 0:
        is_stuck = rng.random(g.shape) < profile.corrupt_devices_prob
        at_max = rng.random(g.shape) < profile.stuck_at_max_prob
        stuck = np.where(is_stuck, np.where(at_max, 2, 1), 0).astype(np.uint8)
        g = np.where(stuck == 1, 0.0, np.where(stuck == 2, span, g))
        if levels is not None:
            levels = np.where(stuck == 1, 0, np.where(stuck == 2, profile.n_levels - 1, levels)).astype(np.int16)
    g_abs = (g + profile.g_min_uS).astype(np.float32)
    return ConductanceSpec(g_abs[0], g_abs[1], profile.g_min_uS, profile.g_max_uS, float(scale), levels, stuck)


def map_spec(spec: NetworkSpec, profile: DeviceProfile) -> NetworkSpec:
    """`spec` with every layer mapped to conductances and `weight` set to the effective weights."""
    rng = np.random.default_rng(profile.seed)
    layers = []
    for ls in spec.layers:
        c = map_weight(ls.weight, profile, rng)
        layers.append(_with_conductance(ls, c))
    return spec.with_(layers=tuple(layers), device=DeviceSpec(profile.model, asdict(profile)))


def _with_conductance(ls, c: ConductanceSpec):
    return replace(ls, weight=c.effective_weight(), conductance=c)


MEASURED_TOLERANCE = 0.05  # fraction of the span g_max − g_min by which a measured value may leave [g_min, g_max]


def import_conductances(spec: NetworkSpec, measured: dict[str, np.ndarray], source: str, *, clip: bool = False,
                        tolerance: float = MEASURED_TOLERANCE, clipped: dict[str, int] | None = None) -> NetworkSpec:
    """Replace each layer's g± by measured values (keys `layers/NN/g_plus_uS`, `…/g_minus_uS`, µS) and
    recompute the effective weights W = (g+ − g−)/scale with the file's scale; errors name the source
    file, the layer and the key.

    Measured values must lie in the device's range widened by the measurement tolerance,

        max(0, g_min − tolerance·(g_max − g_min)) ≤ g ≤ g_max + tolerance·(g_max − g_min),

    and are then taken as measured; a value outside it (e.g. a file in S or nS instead of µS) is refused
    naming the worst value. With `clip=True` every finite value is accepted and clipped to [g_min, g_max]
    instead; `clipped`, if given, receives the number of values clipped per key (keys with none are
    left out). Non-finite values are always refused."""
    if not 0.0 <= tolerance < float("inf"):
        raise ConfigError(f"tolerance must be a finite fraction ≥ 0 of g_max − g_min, got {tolerance}")
    layers = list(spec.layers)
    names = {f"layers/{i:02d}/{g}" for i in range(len(layers)) for g in ("g_plus_uS", "g_minus_uS")}
    unknown = sorted(k for k in measured if k.rsplit("/", 1)[-1] in ("g_plus_uS", "g_minus_uS") and k not in names)
    if unknown:
        raise ConfigError(f"{source}: {', '.join(repr(k) for k in unknown)} name no layer of the network file "
                          f"(it has layers 00 … {len(layers) - 1:02d}; keys like 'layers/00/g_plus_uS')")
    found = 0
    for i, ls in enumerate(layers):
        kp, km = f"layers/{i:02d}/g_plus_uS", f"layers/{i:02d}/g_minus_uS"
        if kp not in measured and km not in measured:
            continue
        if ls.conductance is None:
            raise ConfigError(f"{source}: layer {i:02d} has measured conductances but the network file has no device mapping for it")
        if kp not in measured or km not in measured:
            raise ConfigError(f"{source}: layer {i:02d} needs both '{kp}' and '{km}'")
        gp, gm = (_measured_array(measured[k], ls.conductance, source, i, k, ls.weight.shape, clip, tolerance, clipped)
                  for k in (kp, km))
        c = replace(ls.conductance, g_plus_uS=gp, g_minus_uS=gm, levels=None)
        layers[i] = _with_conductance(ls, c)
        found += 1
    if not found:
        raise ConfigError(f"{source}: no measured conductances found (keys like 'layers/00/g_plus_uS')")
    return spec.with_(layers=tuple(layers))


def _measured_array(value, c: ConductanceSpec, source: str, layer: int, key: str, shape: tuple, clip: bool,
                    tolerance: float, clipped: dict[str, int] | None) -> np.ndarray:
    """One measured dataset as float32 µS, checked against [g_min, g_max] of the layer's mapping."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise ConfigError(f"{source}: '{key}' (layer {layer:02d}) has dtype {arr.dtype}, expected real numbers (µS)")
    if arr.shape != shape:
        raise ConfigError(f"{source}: '{key}' has shape {arr.shape}, layer {layer:02d} needs {shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ConfigError(f"{source}: '{key}' (layer {layer:02d}) holds {int((~np.isfinite(arr)).sum())} non-finite conductances")
    if clip:
        n = int(((arr < c.g_min_uS) | (arr > c.g_max_uS)).sum())
        if n and clipped is not None:
            clipped[key] = n
        return np.clip(arr, c.g_min_uS, c.g_max_uS).astype(np.float32)
    margin = tolerance * (c.g_max_uS - c.g_min_uS)
    lo, hi = max(0.0, c.g_min_uS - margin), c.g_max_uS + margin
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        dist = np.maximum(lo - arr, arr - hi)
        worst = float(arr.flat[int(np.argmax(dist))])
        raise ConfigError(
            f"{source}: '{key}' (layer {layer:02d}) holds {int(bad.sum())} of {arr.size} conductances outside the device's "
            f"[{c.g_min_uS:g}, {c.g_max_uS:g}] µS (measurement tolerance {tolerance:.0%} of the span: "
            f"[{lo:g}, {hi:g}] µS accepted); worst {worst:g} µS. Wrong units? To accept them clipped to "
            f"[g_min, g_max], pass --clip (clip=True)"
        )
    return arr.astype(np.float32)


def read_measured(path: str | Path) -> dict[str, np.ndarray]:
    """Measured conductances from an .npz (keys `layers/NN/g_plus_uS`) or an HDF5 file (same paths);
    a missing, truncated or unreadable file is one ConfigError naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"measured-conductance file '{path}' does not exist")
    if path.suffix == ".npz":
        try:  # numpy leaks its own file handle when the archive is damaged: open it here
            with open(path, "rb") as fh:
                data = np.load(fh, allow_pickle=False)
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise ValueError("a single .npy array, not an archive of named arrays")
                with data:
                    return {k: data[k] for k in data.files}
        except Exception as e:  # a truncated or garbage archive raises BadZipFile, ValueError, OSError, EOFError, zlib.error, …
            raise ConfigError(f"measured-conductance file '{path}' is not a readable .npz archive ({type(e).__name__}: {e})") from None
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if hasattr(obj, "dtype") else None)
    except Exception as e:  # not HDF5, or damaged: h5py raises OSError, KeyError, RuntimeError, …
        raise ConfigError(f"measured-conductance file '{path}' is neither .npz nor readable HDF5 ({type(e).__name__}: {e})") from None
    return out
