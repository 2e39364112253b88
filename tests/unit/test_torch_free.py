"""The framework-free layers work without torch: the spec, the HDF5 file, the devices, the analog substrate
(numpy twin and numba kernel) and the Brian2 substrate, in a process where `import torch` fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_TORCH = textwrap.dedent(
    """
    import sys
    import warnings

    import pyparsing

    sys.modules["torch"] = None  # every `import torch` (and torchvision's) now raises ImportError
    sys.modules["torchvision"] = None
    warnings.simplefilter("error")  # as in pyproject.toml, brian2's use of pyparsing's old names aside
    warnings.filterwarnings("ignore", category=pyparsing.PyparsingDeprecationWarning)
    """
)

SCRIPT = WITHOUT_TORCH + textwrap.dedent(
    """
    import tempfile
    from pathlib import Path

    import h5py
    import numpy as np

    import neurohw
    from neurohw.core import rng
    from neurohw.devices.inference import NoiseConfig
    from neurohw.devices.mapping import DeviceProfile, map_spec
    from neurohw.devices.pulse_kernels import outer_update
    from neurohw.devices.pulsed import PulsedArray, PulsedDeviceConfig, UpdateConfig
    from neurohw.io.hdf5 import load_spec, save_spec
    from neurohw.spec import LayerSpec, NetworkSpec
    from neurohw.substrates.analog import AnalogSubstrate, Scenario, kernels, twin
    from neurohw.substrates.analog.model import PeripheralConfig, SubstrateConfig, crossbars_from_spec
    from neurohw.substrates.brian2 import Brian2Substrate, load_brian2_scenario

    assert neurohw.load_config("models/mnist_ep_fc1.toml").learner.algorithm == "ep"
    try:
        neurohw.EP
    except ImportError:
        pass
    else:
        raise AssertionError("neurohw.EP resolved without torch")

    # a network file written and read with h5py and numpy only
    g = np.random.default_rng(0)
    w = lambda *s: (0.4 * g.standard_normal(s)).astype(np.float32)
    layers = (LayerSpec("dense", (16,), (12,), w(12, 16), w(12)), LayerSpec("dense", (12,), (5,), w(5, 12), w(5)))
    spec = NetworkSpec("fc", "sigmoid4", "mse", 30, 5, 0.1, (16,), (1, 4, 4), (0.0,), (1.0,), layers)
    path = Path(tempfile.mkdtemp()) / "net.h5"
    save_spec(map_spec(spec, DeviceProfile(g_max_uS=20.0, n_levels=64)), path)
    with h5py.File(path, "r") as f:
        assert f["network/layers/00/conductance/g_plus_uS"].shape == (12, 16)
    back = load_spec(path)
    assert back.device.model == "ideal" and back.layers[0].conductance.levels is not None

    # the analog substrate on a few images: kernel = twin, with read noise and PCM inference noise
    x = back.preprocess(g.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8))
    sc = Scenario(SubstrateConfig(t_max_s=5e-6, seed=2), PeripheralConfig(w_noise=0.02, out_noise=0.01),
                  NoiseConfig(model="pcm", t_inference_s=3600.0))
    a = AnalogSubstrate(sc, "kernel").run(back, x)
    b = AnalogSubstrate(sc, "twin").run(back, x)
    assert np.array_equal(a.steps, b.steps) and np.abs(a.outputs - b.outputs).max() < 1e-12
    cb = crossbars_from_spec(back, None, sc.noise, 2)
    assert np.isfinite(twin.relax(cb, sc.substrate, sc.peripherals, x, np.arange(6))[2]).all()

    # pulsed devices: kernel = twin
    arrays = [PulsedArray(PulsedDeviceConfig(law="soft_bounds", dw_min=0.01), (5, 7), np.random.default_rng(1)) for _ in range(2)]
    xs, ds = g.uniform(-1, 1, (3, 7)), g.uniform(-1, 1, (3, 5))
    counts = [outer_update(arr, xs, ds, 0.05, UpdateConfig(), 3, 4, engine) for arr, engine in zip(arrays, ("kernel", "twin"))]
    assert counts[0] == counts[1] > 0 and np.abs(arrays[0].w - arrays[1].w).max() < 1e-12
    assert 0.0 < float(rng.uniform(rng.key(1, 2))) <= 1.0

    # the Brian2 substrate: rate model, free phase of two images
    b2 = Brian2Substrate(load_brian2_scenario(None, ["brian2.target=numpy", "brian2.t_free_ms=20", "brian2.batch_size=2"]))
    out = b2.run(back, x[:2]).outputs
    assert out.shape == (2, 5) and np.isfinite(out).all()

    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision") and sys.modules[m] is not None)
    assert not loaded, loaded
    print("ok")
    """
)


def _run(code: str, timeout: int) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter at the checkout's root."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_import_neurohw_does_not_import_torch():
    code = "import sys, neurohw; neurohw.load_config('models/mnist_ep_fc1.toml'); print('torch' in sys.modules)"
    r = _run(code, 120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.brian2
def test_spec_hdf5_devices_analog_and_brian2_work_without_torch():
    """The layers below the nets imported and exercised where torch cannot be imported: a file written
    and read (h5py), device mapping, PCM noise, the analog kernel = its twin, pulsed devices, Brian2."""
    pytest.importorskip("brian2")
    r = _run(SCRIPT, 900)  # the first run compiles the numba kernels (cached afterwards)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
