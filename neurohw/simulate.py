"""`neurohw simulate FILE.h5 --substrate torch|analog|brian2 [--sim sims/<scenario>.toml] [--n N] [--out report.json]`.

Runs the exported network on a substrate over the first N test images of its dataset, next to the
torch substrate (the reference) on the same images, and writes report.json: `accuracy`,
`reference_accuracy`, `agreement` (fraction of equal predictions), `n_samples`, `wall_s` (the analog
kernel's loading or first-run compilation is `compile_s`, apart), the
settling time (continuous-time substrates), the scenario, and the devices that were simulated:
`conductances` (per layer g_min, g_max, mean in µS and stuck devices, as mapped, before inference
noise), `device` (model and parameters of that mapping) and `device_source` ("file", "scenario", or
null for a file without a mapping). A scenario with a [device] table makes the analog substrate
re-map the file's weights onto its devices (docs/math.md eq. map); the report then describes the
re-mapped network and keeps the file's own mapping as `file_device` and `file_conductances`.
"""

from __future__ import annotations

import math
import platform
import time
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from neurohw.data import load_raw
from neurohw.devices.mapping import map_spec
from neurohw.errors import ConfigError
from neurohw.io.hdf5 import load_spec
from neurohw.progress import Progress
from neurohw.spec import NetworkSpec
from neurohw.substrates.torch import TorchSubstrate

SUBSTRATES = ("torch", "analog", "brian2")


def dataset_of(spec: NetworkSpec) -> str:
    """The dataset a spec was trained on (from its config), MNIST for files without one."""
    try:
        return tomllib.loads(spec.config_toml)["data"]["dataset"]
    except (tomllib.TOMLDecodeError, KeyError):
        return "mnist"


def test_split(spec: NetworkSpec, path, data_dir=None, data: str | None = None) -> tuple:
    """(test images, test labels) of the dataset the network `path` was trained on: a named dataset from
    the data directory; an arrays or folder dataset from `data` (its file or folder, resized as in
    training), refused when its sha256 differs from the one the file records."""
    from neurohw.config import DataConfig
    from neurohw.data import FILE_DATASETS, check_fingerprint, dataset_fingerprint

    name = spec.dataset.get("dataset") or dataset_of(spec)
    if name in FILE_DATASETS:
        if not data:
            raise ConfigError(f"'{path}' was trained on an {name} dataset ('{spec.dataset.get('path', '?')}'): pass --data "
                              f"with its {'file' if name == 'arrays' else 'folder'} to simulate its test split")
        image_size = tuple(spec.dataset.get("image_size", ()))
        if spec.dataset.get("sha256"):
            current = dataset_fingerprint(DataConfig(dataset=name, path=str(data), image_size=image_size), data_dir)
            check_fingerprint(spec.dataset, current, f"the network '{path}'")
        return load_raw(name, data_dir, path=str(data), image_size=image_size)[2:]
    if data:
        raise ConfigError(f"--data is the file or folder of an arrays or folder dataset; '{path}' was trained on '{name}', "
                          "which is found in the data directory (--data-dir)")
    return load_raw(name, data_dir)[2:]


def conductance_stats(spec: NetworkSpec) -> dict[str, Any]:
    out = {}
    for i, ls in enumerate(spec.layers):
        c = ls.conductance
        if c is not None:
            g = np.concatenate([c.g_plus_uS.ravel(), c.g_minus_uS.ravel()])
            out[f"{i:02d}"] = {
                "g_min_uS": float(g.min()), "g_max_uS": float(g.max()), "g_mean_uS": float(g.mean()),
                "stuck": int((c.stuck_mask > 0).sum()) if c.stuck_mask is not None else 0,
            }
    return out


def _device_dict(spec: NetworkSpec) -> dict[str, Any] | None:
    return asdict(spec.device) if spec.device is not None else None


def check_n(n: int) -> int:
    """The number of test images as given: an integer ≥ 0, 0 meaning all."""
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ConfigError(f"simulate --n (the number of test images) must be an integer ≥ 0 (0: all), got {n}")
    return int(n)


def simulate(path: str | Path, substrate: str = "analog", scenario_path: str | Path | None = None, n: int = 1000,
             overrides: list[str] | tuple[str, ...] = (), data_dir=None, engine: str | None = None,
             data: str | None = None, progress: bool = False, log=None) -> dict[str, Any]:
    """The report of `path` run on `substrate` over the first `n` test images (0: all). The analog and
    brian2 substrates take a scenario card and `key=value` overrides, the torch substrate neither;
    `engine` (kernel | twin, default kernel) is the analog substrate's only. Every argument is checked
    before any simulation starts. `progress`: a progress bar (on a terminal); `log(line)`, if given,
    receives "compiling kernels (first run only)" when the analog kernel compiles (its time is reported
    apart, `compile_s`, not in `wall_s`) and the estimate of a long run's time (neurohw/progress.py)."""
    if substrate not in SUBSTRATES:
        raise ConfigError(f"unknown substrate '{substrate}'; valid: {', '.join(SUBSTRATES)}")
    n = check_n(n)
    if engine is not None and substrate != "analog":
        raise ConfigError(f"--engine {engine}: engines (kernel | twin) belong to the analog substrate, not to {substrate}")
    if substrate == "torch" and (scenario_path is not None or overrides):
        given = [f"--sim {scenario_path}"] if scenario_path is not None else []
        raise ConfigError(
            f"the torch substrate takes no scenario: it runs the file's weights as they are, so "
            f"{' and '.join([*given, *(f'the override {o}' for o in overrides)])} would be ignored; drop "
            f"{'them' if len(given) + len(overrides) > 1 else 'it'}, or use --substrate analog or brian2"
        )
    if substrate == "brian2":  # check the card and the network before any simulation starts
        from neurohw.substrates.brian2 import load_brian2_scenario

        b2_scenario = load_brian2_scenario(scenario_path, overrides)
    if substrate == "analog":
        from neurohw.substrates.analog import AnalogSubstrate, load_scenario

        engine = engine or "kernel"
        scenario = load_scenario(scenario_path, overrides)
        analog = AnalogSubstrate(scenario, engine)
    spec = load_spec(path)
    if substrate == "brian2":
        from neurohw.substrates.brian2.network import DenseNet

        DenseNet.from_spec(spec)
    x_test, y_test = test_split(spec, path, data_dir, data)
    n = min(n, len(y_test)) if n > 0 else len(y_test)
    images, labels = x_test[:n].numpy(), y_test[:n].numpy()
    x = spec.preprocess(images)
    t0 = time.perf_counter()
    reference = TorchSubstrate().run(spec, x).predictions
    ref_wall = time.perf_counter() - t0
    report: dict[str, Any] = {"file": str(path), "substrate": substrate, "n_samples": n}
    simulated = spec  # the network whose conductances the substrate ran
    if substrate == "torch":
        predictions, wall, extra = reference, ref_wall, {}
    elif substrate == "brian2":
        from neurohw.substrates.brian2 import Brian2Substrate

        sub = Brian2Substrate(b2_scenario)
        b = b2_scenario.brian2
        what = f"simulating {n} images on Brian2 ({b.model}, {sub._target()})"
        with Progress(n, "brian2", bar=progress, log=log, what=what, first_batch=b.batch_size) as bar:
            t0 = time.perf_counter()
            predictions = sub.run(spec, x, progress=bar).predictions
            wall = time.perf_counter() - t0
        simulated_s = n * b.free_steps * b.dt_ms * 1e-3
        extra = {
            "scenario_file": str(scenario_path) if scenario_path else None,
            "scenario": asdict(b2_scenario),
            "target": sub.target,
            "build_wall_s": sub.wall_build_s,
            "run_wall_s": sub.wall_run_s,
            "simulated_s": simulated_s,
            "simulated_s_per_wall_s": simulated_s / wall if wall > 0 else None,
        }
    else:
        compiled, compile_s = False, 0.0
        if engine == "kernel":  # load or compile the kernel before the timing (compiling: tens of seconds)
            from neurohw.substrates.analog import prepare_kernels

            compiled, compile_s = prepare_kernels((lambda: log("compiling kernels (first run only) …")) if log else None)
        what = f"simulating {n} images on the analog substrate ({engine})"
        with Progress(n, "analog", bar=progress, log=log, what=what, first_batch=scenario.substrate.batch_size) as bar:
            t0 = time.perf_counter()
            trace = analog.run(spec, x, progress=bar)
            wall = time.perf_counter() - t0
        predictions = trace.predictions
        dt = scenario.substrate.dt_s
        if scenario.device is not None:  # the substrate re-mapped the weights onto the scenario's devices (eq. map)
            simulated = map_spec(spec, scenario.device)
        extra = {
            "scenario_file": str(scenario_path) if scenario_path else None,
            "scenario": {k: asdict(v) if v is not None else None for k, v in vars(scenario).items()},
            "settling_time_s": {"mean": float(trace.steps.mean() * dt), "max": float(trace.steps.max() * dt)},
            "unsettled": int((trace.steps >= scenario.substrate.max_steps).sum()),
            "engine": engine,
            "compile_s": compile_s,  # making the kernel ready: compiling it (kernels_compiled) or loading it from numba's cache
            "kernels_compiled": compiled,
        }
    remapped = simulated is not spec
    report.update(
        {
            "accuracy": float((predictions == labels).mean()),
            "reference_accuracy": float((reference == labels).mean()),
            "agreement": float((predictions == reference).mean()),
            "wall_s": wall,
            "samples_per_s": n / wall if wall > 0 else None,
            "reference_wall_s": ref_wall,
            "device_source": "scenario" if remapped else "file" if spec.device is not None else None,
            "device": _device_dict(simulated),
            "conductances": conductance_stats(simulated),
            **({"file_device": _device_dict(spec), "file_conductances": conductance_stats(spec)} if remapped else {}),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            **extra,
        }
    )
    return report


def _mapping_text(device: dict[str, Any], stats: dict[str, Any]) -> str:
    """`model, g_min–g_max µS, N stuck` of a device mapping (its conductance statistics)."""
    p = device["params"]
    lo = p.get("g_min_uS", min((s["g_min_uS"] for s in stats.values()), default=math.nan))
    hi = p.get("g_max_uS", max((s["g_max_uS"] for s in stats.values()), default=math.nan))
    levels = f", {p['n_levels']} levels" if p.get("n_levels") else ""
    return f"{device['model']}, {lo:g}–{hi:g} µS{levels}, {sum(s['stuck'] for s in stats.values())} stuck"


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['file']} on {r['substrate']}: accuracy {100 * r['accuracy']:.2f} % on {r['n_samples']} test images "
        f"(torch reference {100 * r['reference_accuracy']:.2f} %, agreement {100 * r['agreement']:.2f} %), "
        f"{r['wall_s']:.1f} s" + (f" (and {r['compile_s']:.1f} s compiling kernels, first run only)" if r.get("kernels_compiled") else "")
    ]
    if r.get("device_source") == "scenario":
        was = (f"the file's mapping, {_mapping_text(r['file_device'], r['file_conductances'])}, was not used"
               if r["file_device"] is not None else "the file has no device mapping")
        lines.append(f"  the scenario's [device] table re-mapped the network: simulated {_mapping_text(r['device'], r['conductances'])} ({was})")
    if "simulated_s_per_wall_s" in r:
        lines.append(f"  brian2 target {r['target']}: {r['simulated_s']:.1f} s simulated (all samples), "
                     f"{r['simulated_s_per_wall_s']:.2f} simulated s per wall s")
    if "settling_time_s" in r:
        st = r["settling_time_s"]
        lines.append(f"  settling time mean {st['mean'] * 1e6:.2f} µs, max {st['max'] * 1e6:.2f} µs; unsettled: {r['unsettled']}")
    return "\n".join(lines)


def _sweep_point(args: tuple) -> dict[str, Any]:
    path, scenario_path, key, value, n, data_dir, overrides = args
    report = simulate(path, "analog", scenario_path, n, [*overrides, f"{key}={value}"], data_dir)
    report["sweep"] = {"key": key, "value": value}
    return report


def sweep(path: str | Path, scenario_path: str | Path | None, key: str, values: list, n: int = 1000,
          workers: int = 1, data_dir=None, overrides: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`simulate` at every value of one scenario key, `workers` points in parallel processes."""
    from neurohw.substrates.analog import load_scenario

    check_n(n)
    for v in values:  # validate every point before any simulation starts
        load_scenario(scenario_path, [*overrides, f"{key}={v}"])
    jobs = [(str(path), scenario_path, key, v, n, data_dir, tuple(overrides)) for v in values]
    if workers <= 1:
        return [_sweep_point(j) for j in jobs]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers, initializer=_one_thread) as pool:
        return pool.map(_sweep_point, jobs)


def _one_thread() -> None:
    """Each sweep worker computes on one thread (the workers are the parallelism)."""
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)
