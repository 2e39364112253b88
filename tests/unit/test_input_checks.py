"""Inputs that used to give wrong results without a word (issue 16, items 2, 3 and 5): measured
conductances of any magnitude, garbage measurement files, simulate reports that describe hardware
that was not simulated, options a substrate ignores, and counts that were silently reinterpreted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurohw.cli import main
from neurohw.config import NetConfig
from neurohw.devices.mapping import MEASURED_TOLERANCE, DeviceProfile, import_conductances, map_spec
from neurohw.errors import ConfigError
from neurohw.io.hdf5 import load_spec, save_spec
from neurohw.nets.build import build_net
from neurohw.nets.convert import to_spec
from tests.conftest import one_line_error
from test_analog import small

RERAM = DeviceProfile(model="ReRAM-like", g_min_uS=1.0, g_max_uS=40.0, n_levels=64, corrupt_devices_prob=0.05, seed=3)




# ---------------------------------------------------------------------------- import-conductances
@pytest.fixture()
def mapped_file(tmp_path):
    """A small dense network mapped onto 1–40 µS devices."""
    return save_spec(map_spec(small("fc"), RERAM), tmp_path / "mapped.h5")


def _measured(path, factor: float = 1.0, offset: float = 0.0) -> dict[str, np.ndarray]:
    spec = load_spec(path)
    out = {}
    for i, ls in enumerate(spec.layers):
        out[f"layers/{i:02d}/g_plus_uS"] = ls.conductance.g_plus_uS * factor + offset
        out[f"layers/{i:02d}/g_minus_uS"] = ls.conductance.g_minus_uS * factor + offset
    return out


def test_import_refuses_conductances_outside_the_device_range(mapped_file, tmp_path, capsys):
    """1,000× g_max (a file in nS) is refused naming the file, layer, key and worst value; nothing written."""
    measured = _measured(mapped_file, factor=1000.0)
    np.savez(tmp_path / "nS.npz", **measured)
    before = mapped_file.read_bytes()
    assert main(["import-conductances", str(mapped_file), str(tmp_path / "nS.npz"), "--out", str(tmp_path / "new.h5")]) == 2
    worst = f"{float(max(a.max() for a in measured.values() if a is measured['layers/00/g_plus_uS'])):g}"
    one_line_error(capsys, "nS.npz", "layer 00", "'layers/00/g_plus_uS'", "[1, 40] µS", "5%", worst, "--clip")
    assert not (tmp_path / "new.h5").exists() and mapped_file.read_bytes() == before
    with pytest.raises(ConfigError, match=r"layers/00/g_plus_uS.*layer 00.*outside"):  # the library checks too
        import_conductances(load_spec(mapped_file), measured, "nS.npz")
    below = _measured(mapped_file, offset=-3.0)  # g_min − 3 µS: beyond 5 % of 39 µS below 1 µS (and negative)
    with pytest.raises(ConfigError, match=r"layers/00/g_plus_uS.*worst -2 µS"):
        import_conductances(load_spec(mapped_file), below, "m.npz")


def test_import_accepts_measurement_noise_within_the_tolerance(mapped_file):
    spec = load_spec(mapped_file)
    margin = 0.9 * MEASURED_TOLERANCE * (RERAM.g_max_uS - RERAM.g_min_uS)
    measured = _measured(mapped_file, offset=margin)  # every device above its programmed value, some above g_max
    new = import_conductances(spec, measured, "m.npz")
    assert new.layers[0].conductance.g_plus_uS.max() > RERAM.g_max_uS  # kept as measured, not clipped
    np.testing.assert_array_equal(new.layers[0].conductance.g_plus_uS, measured["layers/00/g_plus_uS"].astype(np.float32))


def test_import_clip_clips_to_the_device_range_and_says_how_many(mapped_file, tmp_path, capsys):
    measured = _measured(mapped_file, factor=1000.0)
    n_out = sum(int(((a < RERAM.g_min_uS) | (a > RERAM.g_max_uS)).sum()) for a in measured.values())
    np.savez(tmp_path / "nS.npz", **measured)
    assert main(["import-conductances", str(mapped_file), str(tmp_path / "nS.npz"), "--out", str(tmp_path / "new.h5"), "--clip"]) == 0
    out = capsys.readouterr().out
    assert f"{n_out} measured values" in out and "clipped" in out and "layers/00/g_plus_uS" in out
    for ls in load_spec(tmp_path / "new.h5").layers:
        c = ls.conductance
        assert c.g_plus_uS.min() >= 1.0 and c.g_plus_uS.max() <= 40.0 and c.g_minus_uS.min() >= 1.0 and c.g_minus_uS.max() <= 40.0
    clipped: dict[str, int] = {}
    import_conductances(load_spec(mapped_file), measured, "nS.npz", clip=True, clipped=clipped)
    assert sum(clipped.values()) == n_out
    nan = _measured(mapped_file)
    nan["layers/01/g_minus_uS"][0, 0] = np.nan
    with pytest.raises(ConfigError, match=r"layers/01/g_minus_uS.*non-finite"):  # clipping never hides a NaN
        import_conductances(load_spec(mapped_file), nan, "m.npz", clip=True)


def test_import_refuses_keys_that_name_no_layer(mapped_file):
    measured = _measured(mapped_file)
    measured["layers/07/g_plus_uS"] = measured["layers/00/g_plus_uS"]
    with pytest.raises(ConfigError, match=r"'layers/07/g_plus_uS' name no layer.*00 … 02"):
        import_conductances(load_spec(mapped_file), measured, "m.npz")


@pytest.mark.parametrize(
    "name, damage",
    [
        ("truncated.npz", lambda p, good: p.write_bytes(good[: len(good) // 2])),
        ("garbage.npz", lambda p, good: p.write_bytes(b"not a zip archive at all\n" * 10)),
        ("empty.npz", lambda p, good: p.write_bytes(b"")),
        ("array.npz", lambda p, good: np.save(p.with_suffix(".npy"), np.ones(3)) or p.with_suffix(".npy").rename(p)),
        ("garbage.h5", lambda p, good: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 200)),
    ],
)
def test_unreadable_measured_files_are_one_line_naming_the_file(mapped_file, tmp_path, capsys, name, damage):
    np.savez(tmp_path / "good.npz", **_measured(mapped_file))
    damage(tmp_path / name, (tmp_path / "good.npz").read_bytes())
    assert main(["import-conductances", str(mapped_file), str(tmp_path / name), "--out", str(tmp_path / "new.h5")]) == 2
    one_line_error(capsys, str(tmp_path / name))
    assert not (tmp_path / "new.h5").exists()


# --------------------------------------------------------------------------------------- simulate
@pytest.fixture(scope="module")
def mnist_file(tmp_path_factory):
    """A small 784-12-10 network mapped onto 1–40 µS devices with stuck ones (MNIST-shaped input)."""
    net = build_net(NetConfig(hidden=(12,), activation="sigmoid4"), (1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
    spec = to_spec(net, T_free=60, T_nudge=5, beta=0.1, image_shape=(1, 28, 28), input_mean=(0.0,), input_std=(1.0,))
    return save_spec(map_spec(spec, RERAM), tmp_path_factory.mktemp("sim") / "net.h5")


def test_simulate_reports_the_devices_the_scenario_mapped(mnist_file, tmp_path, capsys):
    """sims/ideal.toml has a [device] table (0–25 µS, nothing stuck): the report describes that, not the file's 1–40 µS."""
    out = tmp_path / "report.json"
    assert main(["simulate", str(mnist_file), "--sim", "sims/ideal.toml", "--n", "10", "--engine", "twin",
                 "substrate.t_max_s=2e-6", "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert "re-mapped" in console and "ideal, 0–25 µS" in console and "ReRAM-like, 1–40 µS" in console
    r = json.loads(out.read_text())
    assert r["device_source"] == "scenario" and r["device"]["model"] == "ideal"
    for stats in r["conductances"].values():
        assert stats["g_min_uS"] == 0.0 and stats["g_max_uS"] == 25.0 and stats["stuck"] == 0
    assert r["file_device"]["model"] == "ReRAM-like"
    assert sum(s["stuck"] for s in r["file_conductances"].values()) > 0
    assert min(s["g_min_uS"] for s in r["file_conductances"].values()) == 1.0
    assert main(["simulate", str(mnist_file), "--substrate", "torch", "--n", "10", "--out", str(out)]) == 0
    r = json.loads(out.read_text())  # no re-mapping: the file's devices were simulated
    assert r["device_source"] == "file" and r["device"]["model"] == "ReRAM-like" and "file_conductances" not in r
    assert "re-mapped" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--substrate", "torch", "--sim", "sims/ideal.toml"], ["torch substrate takes no scenario", "--sim sims/ideal.toml"]),
        (["--substrate", "torch", "peripherals.adc_bits=-3"], ["torch substrate takes no scenario", "peripherals.adc_bits=-3"]),
        (["--substrate", "torch", "--engine", "twin"], ["--engine twin", "analog substrate"]),
        (["--substrate", "brian2", "--engine", "kernel"], ["--engine kernel", "analog substrate"]),
        (["peripherals.adc_bits=-3"], ["peripherals.adc_bits", "0 (ideal) or 2 … 24", "-3"]),
        (["--n", "-5"], ["--n", "≥ 0", "0: all", "-5"]),
        (["--substrate", "torch", "--n", "-5"], ["--n", "≥ 0", "-5"]),
    ],
)
def test_simulate_refuses_options_the_substrate_does_not_use_and_bad_counts(mnist_file, capsys, extra, words):
    assert main(["simulate", str(mnist_file), *extra]) == 2
    one_line_error(capsys, *words)


def test_simulate_library_refuses_negative_n(mnist_file):
    from neurohw.simulate import simulate

    with pytest.raises(ConfigError, match="≥ 0"):
        simulate(mnist_file, "torch", n=-5)


# ------------------------------------------------------------------------------------------ bench
@pytest.mark.parametrize(
    "args, words",
    [
        (["--samples", "0"], ["--samples", "≥ 20", "got 0"]),
        (["--samples", "-100"], ["--samples", "got -100"]),
        (["--samples", "5"], ["--samples", "≥ 20", "one batch"]),
        (["--repeats", "0"], ["--repeats", "≥ 1", "got 0"]),
        (["--threads", "-2"], ["--threads", "≥ 0", "got -2"]),
        (["--analog", "NET", "--samples", "0"], ["--samples", "≥ 1", "got 0"]),
        (["--analog", "NET", "--threads", "-1"], ["--threads", "got -1"]),
        (["--brian2", "NET", "--samples", "-3"], ["--samples", "got -3"]),
        (["--sim", "sims/ideal.toml"], ["--sim", "--analog or --brian2"]),
    ],
)
def test_bench_refuses_bad_counts_before_any_work(mnist_file, capsys, args, words):
    assert main(["bench", *[str(mnist_file) if a == "NET" else a for a in args]]) == 2
    one_line_error(capsys, *words)


def test_bench_library_refuses_bad_counts():
    from neurohw.bench import run_analog_bench, run_bench

    with pytest.raises(ConfigError, match="samples"):
        run_bench(samples=0)
    with pytest.raises(ConfigError, match="repeats"):
        run_bench(samples=100, repeats=0)
    with pytest.raises(ConfigError, match="threads"):
        run_analog_bench("unused.h5", n=10, threads=0)
