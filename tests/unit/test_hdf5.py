"""The weight contract: spec round trips, the HDF5 file, bad files, device mapping, atomic export."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurohw.cli import main
from neurohw.config import NetConfig, load_config
from neurohw.devices.mapping import DeviceProfile, import_conductances, load_profile, map_spec, map_weight
from neurohw.errors import ConfigError, SpecError
from neurohw.export import spec_from_run
from neurohw.io.hdf5 import STAMP_MAGIC, USERBLOCK, load_spec, save_spec, stamp_file
from neurohw.learning import set_initial_angle
from neurohw.nets.build import build_net
from neurohw.nets.convert import from_spec, to_spec
from neurohw.substrates.torch import TorchSubstrate
from neurohw.train import build_model, train

ROOT = Path(__file__).resolve().parents[2]
META = dict(T_free=20, T_nudge=5, beta=0.2, image_shape=(1, 6, 6), input_mean=(0.1,), input_std=(0.5,))


def small_spec(kind: str = "fc", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = {
        "fc": NetConfig(hidden=(7, 5), activation="sigmoid4"),
        "ce": NetConfig(hidden=(7,), cost="ce_readout", activation="hard_sigmoid", nudge="outside"),
        "conv": NetConfig(architecture="conv", channels=(3,), kernel_sizes=(3,), paddings=(1,), pools=("max2",), hidden=(5,)),
        "cvf": NetConfig(hidden=(6,), activation="tanh"),
    }[kind]
    net = build_net(cfg, (1, 6, 6), 4, untied=kind == "cvf", generator=g)
    if kind == "cvf":
        set_initial_angle(net, 40.0, g)
    return net, to_spec(net, **META)


@pytest.mark.parametrize("kind", ["fc", "ce", "conv", "cvf"])
def test_to_spec_from_spec_and_file_round_trip_exactly(kind, tmp_path):
    net, spec = small_spec(kind)
    back = from_spec(spec)
    for (name, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    assert (back.cost, back.nudge, back.activation.name, back.input_shape) == (net.cost, net.nudge, net.activation.name, net.input_shape)
    save_spec(spec, tmp_path / "n.h5")
    loaded = load_spec(tmp_path / "n.h5")
    for a, b in zip(spec.layers, loaded.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert (a.type, a.in_shape, a.out_shape, a.pool, a.stride, a.padding, a.readout) == (
            b.type, b.in_shape, b.out_shape, b.pool, b.stride, b.padding, b.readout)
        assert (a.weight_backward is None) == (b.weight_backward is None)
    assert (loaded.T_free, loaded.beta, loaded.input_mean, loaded.nudge) == (20, 0.2, (0.1,), spec.nudge)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_small):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        ROOT / "models" / "mnist_ep_fc1.toml",
        ["net.hidden=[40]", "train.epochs=1", "data.limit_train=600", "data.limit_eval=300", "device=cpu"],
    )
    train(cfg, out, splits=mnist_small, progress=False, log=None)
    return out


def test_export_then_torch_substrate_gives_identical_predictions(trained_run, mnist_small, tmp_path):
    """train → export → load → the torch substrate: the trained net's test predictions, bit for bit."""
    assert main(["export", str(trained_run), "--out", str(tmp_path / "net.h5")]) == 0
    spec = load_spec(tmp_path / "net.h5")
    cfg = load_config(trained_run / "config.toml")
    net = build_model(cfg, (1, 28, 28), 10)
    net.load_state_dict(torch.load(trained_run / "best.pt", weights_only=True)["net"])
    from neurohw.data import DATASETS, Preprocess
    from neurohw.learning import build_learner

    images = mnist_small.test.images[:300]
    pre = Preprocess(DATASETS["mnist"], net.input_shape, torch.device("cpu"), torch.float32)
    reference = build_learner(cfg.learner).predict(net, pre(images)).numpy()
    trace = TorchSubstrate().run(spec, spec.preprocess(images.numpy()))
    assert np.array_equal(trace.outputs, reference)
    assert spec.algorithm == "ep" and spec.config_toml == (trained_run / "config.toml").read_text()


def test_an_async_run_exports_its_relaxation_and_the_torch_substrate_follows_it(mnist_small, tmp_path):
    """learner.relaxation = async: T_free counts sweeps; the file says so and the torch substrate runs
    sweeps (bit for bit the learner's predictions; a sync reading of the same file predicts otherwise
    on some images). A file written before the attribute existed reads as sync."""
    run = tmp_path / "run"
    cfg = load_config(ROOT / "models" / "mnist_ep_fc1.toml",
                      ["net.hidden=[40]", "train.epochs=1", "data.limit_train=400", "data.limit_eval=100", "device=cpu",
                       "learner.relaxation=async", "learner.T_free=6", "learner.T_nudge=4"])
    train(cfg, run, splits=mnist_small, progress=False, log=None)
    assert main(["export", str(run), "--out", str(tmp_path / "net.h5")]) == 0
    spec = load_spec(tmp_path / "net.h5")
    assert spec.relaxation == "async" and spec.T_free == 6
    net = build_model(cfg, (1, 28, 28), 10)
    net.load_state_dict(torch.load(run / "best.pt", weights_only=True)["net"])
    from neurohw.data import DATASETS, Preprocess
    from neurohw.learning import build_learner

    images = mnist_small.test.images[:300]
    pre = Preprocess(DATASETS["mnist"], net.input_shape, torch.device("cpu"), torch.float32)
    reference = build_learner(cfg.learner).predict(net, pre(images)).numpy()
    x = spec.preprocess(images.numpy())
    assert np.array_equal(TorchSubstrate().run(spec, x).outputs, reference)
    as_sync = TorchSubstrate().run(spec.with_(relaxation="sync"), x).outputs
    assert not np.array_equal(as_sync, reference)  # 6 sweeps ≠ 6 sync steps: the attribute matters
    with h5py.File(tmp_path / "net.h5", "r+") as f:
        del f["network"].attrs["relaxation"]
    stamp_file(tmp_path / "net.h5")
    assert load_spec(tmp_path / "net.h5").relaxation == "sync"


def _independent_free_phase(path: Path, images: np.ndarray) -> np.ndarray:
    """A reader that knows only h5py, numpy and docs/hdf5.md (no neurohw)."""
    rho = {
        "sigmoid4": lambda a: 1.0 / (1.0 + np.exp(-4.0 * (a - 0.5))),
        "tanh": np.tanh,
        "hard_sigmoid": lambda a: np.clip(a, 0.0, 1.0),
        "hard_sigmoid_half": lambda a: np.clip(a / 2.0, 0.0, 1.0),
        "identity": lambda a: a,
    }
    with h5py.File(path, "r") as f:
        net = f["network"]
        act = rho[net.attrs["activation"]]
        mean, std = net.attrs["input_mean"], net.attrs["input_std"]
        W = [f[f"network/layers/{k}/weight"][()].astype(np.float64) for k in sorted(net["layers"])]
        b = [f[f"network/layers/{k}/bias"][()].astype(np.float64) for k in sorted(net["layers"])]
        T = int(net.attrs["T_free"])
    x = ((images.astype(np.float64) / 255.0 - mean[0]) / std[0]).reshape(len(images), -1)
    s = [np.zeros((len(x), w.shape[0])) for w in W]
    for _ in range(T):
        s = [act(x @ W[0].T + b[0] + s[1] @ W[1]), act(s[0] @ W[1].T + b[1])]
    return s[-1]


def test_an_independent_reader_reproduces_the_free_phase(trained_run, mnist_small, tmp_path):
    main(["export", str(trained_run), "--out", str(tmp_path / "net.h5")])
    images = mnist_small.test.images[:200].numpy()
    ours = TorchSubstrate().run(load_spec(tmp_path / "net.h5"), load_spec(tmp_path / "net.h5").preprocess(images)).outputs
    np.testing.assert_allclose(_independent_free_phase(tmp_path / "net.h5", images), ours, atol=1e-6)


# ------------------------------------------------------------------------------------ bad files
@pytest.fixture()
def valid_file(tmp_path) -> Path:
    _, spec = small_spec("conv")
    spec = map_spec(spec, DeviceProfile(n_levels=16, corrupt_devices_prob=0.05))
    return save_spec(spec, tmp_path / "valid.h5")


def _edit(path: Path, fn) -> Path:
    """A deliberate edit with h5py, re-stamped so that the file-level checksum passes and the
    schema checks below it are what is tested."""
    with h5py.File(path, "r+") as f:
        fn(f)
    return stamp_file(path)


def test_the_user_block_checksum_catches_any_changed_byte_before_hdf5_parses(valid_file):
    """Every byte after the 512-byte user block is covered by the stamp; an edit is refused until re-stamped."""
    original = load_spec(valid_file)
    data = valid_file.read_bytes()
    assert data.startswith(STAMP_MAGIC) and len(data) > USERBLOCK
    rng = np.random.default_rng(0)
    for pos in [USERBLOCK, len(data) - 1, *rng.integers(USERBLOCK, len(data), 20)]:
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        valid_file.write_bytes(bytes(bad))
        with pytest.raises(SpecError, match="sha256 of its bytes after the user block"):
            load_spec(valid_file)
    bad = bytearray(data)
    bad[len(STAMP_MAGIC) + 70] = 0x41  # in the padding of the user block
    valid_file.write_bytes(bytes(bad))
    with pytest.raises(SpecError, match="user block"):
        load_spec(valid_file)
    valid_file.write_bytes(data)
    _edit(valid_file, lambda f: f.attrs.__setitem__("seed", 5))  # h5py keeps the user block; stamp_file blesses
    assert load_spec(valid_file).seed == 5 and load_spec(valid_file).layers[0].weight.tobytes() == original.layers[0].weight.tobytes()


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), ["damaged"]),
        (lambda p: p.write_text("not hdf5"), ["not an HDF5 file"]),
        (lambda p: _edit(p, lambda f: f.__delitem__("network/layers/01")), ["network/layers/01/weight", "missing"]),
        (lambda p: _edit(p, lambda f: f.__delitem__("network")), ["network/layers/00/weight", "missing"]),
        (lambda p: _edit(p, lambda f: f["network/layers/00"].__delitem__("bias")), ["network/layers/00/bias", "missing"]),
        (lambda p: _edit(p, lambda f: (f["network/layers/01"].__delitem__("bias"), f["network/layers/01"].create_dataset("bias", data=np.zeros(3, np.float32)))), ["network/layers/01/bias", "shape"]),
        (lambda p: _edit(p, lambda f: (f["network/layers/01"].__delitem__("bias"), f["network/layers/01"].create_dataset("bias", data=np.zeros(5, np.float64)))), ["network/layers/01/bias", "dtype float64"]),
        (lambda p: _edit(p, lambda f: f.attrs.__setitem__("format_version", 7)), ["format_version", "7 is not supported"]),
        (lambda p: _edit(p, lambda f: f["network/layers/00/weight"].__setitem__((0, 0, 0, 0), 9.0)), ["network/layers/00/weight", "checksum"]),
        (lambda p: _edit(p, lambda f: f["network"].attrs.__setitem__("activation", "relu")), ["activation", "relu"]),
        (lambda p: _edit(p, lambda f: f["network/layers/00/conductance"].attrs.__setitem__("g_max_uS", -1.0)), ["conductance", "g_min_uS < g_max_uS"]),
    ],
)
def test_bad_files_raise_one_error_naming_file_and_dataset(valid_file, damage, words, capsys):
    damage(valid_file)
    with pytest.raises(SpecError) as e:
        load_spec(valid_file)
    msg = str(e.value)
    assert str(valid_file) in msg
    for w in words:
        assert w in msg
    assert main(["validate", str(valid_file)]) == 2
    assert str(valid_file) in capsys.readouterr().err


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.h5")


MUTATIONS = ["flip_byte", "delete", "attr", "data"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(MUTATIONS), pick=st.integers(0, 10**9), value=st.integers(0, 255))
def test_mutated_files_load_identically_or_raise_spec_error(valid_file, kind, pick, value):
    """Whatever is damaged, load_spec returns the same network or raises SpecError — nothing else (no crash)."""
    work = valid_file.with_name(f"m_{kind}_{pick}.h5")
    shutil.copy(valid_file, work)
    original = load_spec(valid_file)
    names: list[str] = []
    with h5py.File(work, "r") as f:
        f.visit(names.append)
    target = names[pick % len(names)]
    if kind == "flip_byte":
        data = bytearray(work.read_bytes())
        data[pick % len(data)] ^= (value % 255) + 1
        work.write_bytes(bytes(data))
    else:
        with h5py.File(work, "r+") as f:
            obj = f[target]
            if kind == "delete":
                del f[target]
            elif kind == "attr":
                keys = list(obj.attrs) or list(f.attrs)
                owner = obj if obj.attrs else f
                key = keys[pick % len(keys)]
                owner.attrs[key] = [value, "x", float(value)][pick % 3]
            elif hasattr(obj, "dtype") and obj.size:
                flat = obj[()].reshape(-1)
                flat[pick % flat.size] = flat[pick % flat.size] + 1 + value
                obj[...] = flat.reshape(obj.shape)
        stamp_file(work)  # edits made with h5py reach the schema checks; byte flips are caught by the stamp
    try:
        loaded = load_spec(work)
    except SpecError as e:
        assert str(work) in str(e)
        return
    for a, b in zip(original.layers, loaded.layers):  # survived: the network must be unchanged
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        if a.conductance is not None:
            assert np.array_equal(a.conductance.g_plus_uS, b.conductance.g_plus_uS)


def test_export_is_atomic_when_killed(tmp_path):
    """SIGKILL during the write of a large file leaves nothing at the target path."""
    target = tmp_path / "big.h5"
    code = f"""
import numpy as np
from neurohw.spec import LayerSpec, NetworkSpec
from neurohw.io.hdf5 import save_spec
w = np.random.default_rng(0).standard_normal((3000, 3000)).astype(np.float32)
layers = tuple(LayerSpec("dense", (3000,), (3000,), w, np.zeros(3000, np.float32)) for _ in range(8))
spec = NetworkSpec("fc", "tanh", "mse", 10, 5, 0.1, (3000,), (1, 1, 3000), (0.0,), (1.0,), layers)
print("ready", flush=True)
save_spec(spec, {str(target)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.time() + 60

    def partial_size() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob(".big.h5.*.tmp"))

    while partial_size() < 20_000_000 and time.time() < deadline:  # some layers written, not all (288 MB)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not target.exists()


# ------------------------------------------------------------------------------ device mapping
def test_mapping_is_the_differential_pair_of_the_weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((30, 40)).astype(np.float32)
    c = map_weight(w, DeviceProfile(g_min_uS=1.0, g_max_uS=41.0), np.random.default_rng(0))
    assert c.scale_uS_per_unit == pytest.approx(40.0 / np.abs(w).max())
    assert c.g_plus_uS.min() >= 1.0 and c.g_plus_uS.max() <= 41.0 and c.g_minus_uS.min() >= 1.0
    assert np.all((c.g_plus_uS == 1.0) | (c.g_minus_uS == 1.0))  # one device of each pair at g_min
    np.testing.assert_allclose(c.effective_weight(), w, atol=1e-5)
    q = map_weight(w, DeviceProfile(g_min_uS=1.0, g_max_uS=41.0, n_levels=5), np.random.default_rng(0))
    assert set(np.unique(q.g_plus_uS)) <= {1.0, 11.0, 21.0, 31.0, 41.0}
    np.testing.assert_array_equal(q.g_plus_uS, 1.0 + 10.0 * q.levels[0])
    assert np.abs(q.effective_weight() - w).max() <= 5.0 / q.scale_uS_per_unit + 1e-6  # half a level
    s = map_weight(w, DeviceProfile(corrupt_devices_prob=0.2, stuck_at_max_prob=1.0), np.random.default_rng(0))
    assert 0.15 < (s.stuck_mask > 0).mean() < 0.25 and np.all(s.g_plus_uS[s.stuck_mask[0] == 2] == 25.0)


def test_profiles_are_validated(tmp_path):
    assert load_profile(ROOT / "sims" / "reram_64levels.toml").n_levels == 64
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\ng_min_uS = 5.0\ng_max_uS = 1.0\n")
    with pytest.raises(ConfigError, match="g_min < g_max"):
        load_profile(bad)
    bad.write_text("[device]\ng_maxx_uS = 5.0\n")
    with pytest.raises(ConfigError, match=r"device.g_maxx_uS.*did you mean 'device.g_max_uS'.*bad.toml"):
        load_profile(bad)


def test_measured_conductances_close_the_loop(valid_file, tmp_path):
    spec = load_spec(valid_file)
    rng = np.random.default_rng(1)
    measured = {}
    for i, ls in enumerate(spec.layers):
        measured[f"layers/{i:02d}/g_plus_uS"] = ls.conductance.g_plus_uS + rng.uniform(0.0, 0.3, ls.weight.shape)
        measured[f"layers/{i:02d}/g_minus_uS"] = ls.conductance.g_minus_uS + 0.05
    np.savez(tmp_path / "m.npz", **measured)
    assert main(["import-conductances", str(valid_file), str(tmp_path / "m.npz"), "--out", str(tmp_path / "new.h5")]) == 0
    new = load_spec(tmp_path / "new.h5")
    for i, ls in enumerate(new.layers):
        want = (measured[f"layers/{i:02d}/g_plus_uS"].astype(np.float32).astype(np.float64) - measured[f"layers/{i:02d}/g_minus_uS"].astype(np.float32)) / ls.conductance.scale_uS_per_unit
        np.testing.assert_allclose(ls.weight, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="layer 00"):
        import_conductances(spec, {"layers/00/g_plus_uS": np.zeros((2, 2)), "layers/00/g_minus_uS": np.zeros((2, 2))}, "m.npz")


def test_mapped_export_runs_on_the_torch_substrate(trained_run, tmp_path, mnist_small, capsys):
    out = tmp_path / "mapped.h5"
    assert main(["export", str(trained_run), "--device", str(ROOT / "sims" / "reram_64levels.toml"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ReRAM" in text and "µS" in text and "stuck" in text
    spec = load_spec(out)
    ideal = spec_from_run(trained_run)
    x = spec.preprocess(mnist_small.test.images[:300].numpy())
    agree = (TorchSubstrate().run(spec, x).predictions == TorchSubstrate().run(ideal, x).predictions).mean()
    assert agree > 0.9  # 64 levels and 0.1 % stuck devices change few predictions
