"""`neurohw export RUN_OR_FILE --format nir [--sim CARD]` and `neurohw simulate FILE.nir` (docs/math.md eq. nir-map).

Export writes a dense EP network (a run directory or a neurohw HDF5 file) as a NIR graph of the
NIR-expressible spiking scenario (brian2.model = "cubalif", sims/nir_cubalif.toml), refusing what NIR
cannot carry. Simulate reads a NIR graph of that form — written by neurohw or by another tool — into the
Brian2 substrate; for a file neurohw wrote it recovers the network (neurohw.io.nir.spec_from_nir) and runs
the torch reference next to it on the same test images, as `neurohw simulate FILE.h5` does.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from neurohw.errors import ConfigError

FORMATS = ("hdf5", "nir")
NIR_DEFAULTS = ("brian2.model=cubalif", "brian2.dt_ms=0.1")  # the scenario without a card (as sims/nir_cubalif.toml)


def nir_scenario(card: str | Path | None, overrides=()):
    """The Brian2 scenario of a NIR export or simulation; a card must use brian2.model = 'cubalif'."""
    from neurohw.substrates.brian2 import load_brian2_scenario

    scenario = load_brian2_scenario(card, [*(NIR_DEFAULTS if card is None else ()), *overrides])
    model = scenario.brian2.model
    what = f"'{card}'" if card is not None else "this scenario"
    if model == "lif":
        raise ConfigError(
            f"{what} is the LIF scenario (brian2.model = 'lif'): it drives each neuron through the inverse of its f–I "
            "curve composed with ρ, with a refractory period and a reset to v_rest, which NIR's CubaLIF neurons (linear in "
            "their input current, no refractory period) cannot express. Use --sim sims/nir_cubalif.toml"
        )
    if model != "cubalif":
        raise ConfigError(f"{what} runs brian2.model = '{model}', which is not spiking; NIR export and NIR files use "
                          "brian2.model = 'cubalif': --sim sims/nir_cubalif.toml")
    return scenario


def is_nir_file(path: str | Path) -> bool:
    """Whether `path` is a NIR file (nir.write's layout: an HDF5 file with a 'node' group and a 'version'), whatever
    its suffix; h5py only."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("node"), h5py.Group) and "version" in f and "format" not in f.attrs
    except (OSError, ValueError):
        return False


def export(run_or_file: str | Path, out: str | Path | None = None, card: str | Path | None = None,
           device: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the network of a run directory or a neurohw HDF5 file as a NIR file (default <run>/network.nir or
    FILE with the suffix .nir); an existing file is replaced only with `overwrite`."""
    from neurohw.io.nir import export_nir

    if device is not None:
        raise ConfigError(f"--device {device}: NIR's Affine/Linear nodes hold ideal weights and have no place for "
                          "conductances, programmed levels or stuck devices; export without --device (simulate a device "
                          "mapping with `neurohw export --device … --format hdf5` and `neurohw simulate --substrate analog`)")
    scenario = nir_scenario(card)
    src = Path(run_or_file)
    if src.is_dir():
        from neurohw.export import spec_from_run

        spec = spec_from_run(src)
        default = src / "network.nir"
    elif src.exists():
        from neurohw.io.hdf5 import load_spec

        spec = load_spec(src)
        default = src.with_suffix(".nir")
    else:
        raise ConfigError(f"'{src}' is neither a run directory nor a network file")
    target = Path(out) if out else default
    if target.exists() and not overwrite:
        raise ConfigError(f"'{target}' already exists: pass --overwrite to replace it, or another --out")
    return export_nir(spec, scenario.cubalif, target)


def _foreign_inputs(scenario, n: int, n_in: int, data_dir) -> tuple[np.ndarray, np.ndarray]:
    from neurohw.data import load_raw

    cfg = scenario.nir
    x_test, y_test = load_raw(cfg.dataset, data_dir)[2:]
    n = min(n, len(y_test)) if n > 0 else len(y_test)
    images = x_test[:n].numpy()
    x = images.reshape(n, -1).astype(np.float64) / cfg.input_scale
    if x.shape[1] != n_in:
        raise ConfigError(f"the NIR graph takes {n_in} inputs, a {cfg.dataset} image has {x.shape[1]} values: set "
                          "nir.dataset to the dataset it was built for")
    return x, y_test[:n].numpy()


def simulate(path: str | Path, substrate: str | None = None, card: str | Path | None = None, n: int = 1000,
             overrides=(), data_dir=None, engine: str | None = None, data: str | None = None) -> dict[str, Any]:
    """The report of the NIR file `path` run on the Brian2 substrate over the first `n` test images (0: all)."""
    from neurohw.io.nir import read_graph, from_graph, metadata, spec_from_nir
    from neurohw.simulate import check_n, test_split
    from neurohw.substrates.brian2 import Brian2Substrate

    if substrate not in (None, "brian2"):
        raise ConfigError(f"a NIR file runs on the brian2 substrate (NIR's CubaLIF neurons), not on {substrate}: drop --substrate")
    if engine is not None:
        raise ConfigError(f"--engine {engine} belongs to the analog substrate; a NIR file runs on brian2")
    n = check_n(n)
    scenario = nir_scenario(card, overrides)
    graph = read_graph(path)
    net = from_graph(graph, str(path))
    meta = metadata(graph)
    reference = None
    ref_wall = None
    if meta is not None:  # written by neurohw export: its data, preprocessing and the torch reference
        spec, _ = spec_from_nir(path)
        want = float(meta["spike_area_s"]) * 1e3
        if not np.isclose(want, scenario.cubalif.spike_area_ms, rtol=1e-12, atol=0):
            raise ConfigError(f"'{path}' was written with spikes of area {want:g} ms (its weights assume it): set "
                              f"cubalif.spike_area_ms = {want:g}")
        x_test, y_test = test_split(spec, path, data_dir, data)
        n = min(n, len(y_test)) if n > 0 else len(y_test)
        labels = y_test[:n].numpy()
        x = spec.preprocess(x_test[:n].numpy()).reshape(n, -1)
        from neurohw.substrates.torch import TorchSubstrate

        t0 = time.perf_counter()
        reference = TorchSubstrate().run(spec, x.reshape(n, *spec.input_shape)).predictions
        ref_wall = time.perf_counter() - t0
    else:
        if data is not None:
            raise ConfigError("--data belongs to files neurohw wrote (they record their dataset); for this file set nir.dataset")
        x, labels = _foreign_inputs(scenario, n, net.n_in, data_dir)
        n = len(labels)
    sub = Brian2Substrate(scenario)
    t0 = time.perf_counter()
    outputs = sub.run_cubalif(net, x)
    wall = time.perf_counter() - t0
    predictions = outputs.argmax(1)
    b = scenario.brian2
    simulated_s = n * b.free_steps * b.dt_ms * 1e-3
    return {
        "file": str(path), "format": "nir", "substrate": "brian2", "n_samples": n,
        "written_by_neurohw": meta is not None,
        "accuracy": float((predictions == labels).mean()),
        "reference_accuracy": None if reference is None else float((reference == labels).mean()),
        "agreement": None if reference is None else float((predictions == reference).mean()),
        "wall_s": wall, "samples_per_s": n / wall if wall > 0 else None, "reference_wall_s": ref_wall,
        "neurons": net.n, "recurrent_synapses": int(np.count_nonzero(net.w_rec)),
        "scenario_file": str(card) if card else None, "scenario": asdict(scenario), "target": sub.target,
        "build_wall_s": sub.wall_build_s, "run_wall_s": sub.wall_run_s, "simulated_s": simulated_s,
        "simulated_s_per_wall_s": simulated_s / wall if wall > 0 else None,
        "dataset": (meta["spec"]["dataset"].get("dataset") if meta is not None else scenario.nir.dataset),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def format_report(r: dict[str, Any]) -> str:
    ref = (f" (torch reference {100 * r['reference_accuracy']:.2f} %, agreement {100 * r['agreement']:.2f} %)"
           if r["reference_accuracy"] is not None else " (not written by neurohw: no torch reference)")
    return "\n".join([
        f"{r['file']} (NIR) on brian2, {r['neurons']} CubaLIF neurons: accuracy {100 * r['accuracy']:.2f} % on "
        f"{r['n_samples']} {r['dataset']} test images{ref}, {r['wall_s']:.1f} s",
        f"  brian2 target {r['target']}: {r['simulated_s']:.1f} s simulated (all samples), "
        f"{r['simulated_s_per_wall_s']:.2f} simulated s per wall s",
    ])


