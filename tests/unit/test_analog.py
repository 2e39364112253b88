"""The analog substrate: numba kernel = numpy twin, the ideal crossbar = the torch substrate, bad scenarios."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurohw.cli import main
from neurohw.config import NetConfig
from neurohw.core import rng, rng_kernels
from neurohw.core.activations import ACTIVATIONS
from neurohw.errors import ConfigError
from neurohw.io.hdf5 import save_spec
from neurohw.learning import set_initial_angle
from neurohw.nets.build import build_net
from neurohw.nets.convert import to_spec
from neurohw.substrates.analog import AnalogSubstrate, kernels, twin
from neurohw.substrates.analog.model import PeripheralConfig, Scenario, SubstrateConfig, crossbars_from_spec, load_scenario
from neurohw.substrates.torch import TorchSubstrate

META = dict(T_free=200, T_nudge=5, beta=0.1, image_shape=(1, 4, 4), input_mean=(0.0,), input_std=(1.0,))


def small(kind="fc", activation="sigmoid4", seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = {
        "fc": NetConfig(hidden=(12, 8), activation=activation),
        "ce": NetConfig(hidden=(9,), activation=activation, cost="ce_readout"),
        "cvf": NetConfig(hidden=(9,), activation=activation),
    }[kind]
    net = build_net(cfg, (1, 4, 4), 5, untied=kind == "cvf", generator=g)
    if kind == "cvf":
        set_initial_angle(net, 45.0, g)
    return to_spec(net, **META)


def test_counter_rng_matches_between_numpy_and_numba():
    from numba import njit

    @njit
    def draw(seed, n):
        out = np.empty((n, 2))
        base = kernels._read_key(kernels.Key(seed, 3, 5, 1), 2, 4)
        for j in range(n):
            out[j, 0], out[j, 1] = rng_kernels.normal_pair(rng_kernels.mix(base ^ np.uint64(j)))
        return out

    @njit
    def keys(seed, n):
        base = kernels._read_key(kernels.Key(seed, 3, 5, 1), 2, 4)
        return np.array([rng_kernels.mix(base ^ np.uint64(j)) for j in range(n)], dtype=np.uint64)

    k = rng.key(11, 3, 5, 1, 2, 4, np.arange(4096, dtype=np.uint64))
    np.testing.assert_array_equal(keys(11, 4096), k)  # the integer streams are bit-identical
    ours = draw(11, 4096)
    z1, z2 = rng.normal_pair(k)
    # log/cos/sin of numpy and of libm may differ in the last bit
    np.testing.assert_allclose(ours[:, 0], z1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(ours[:, 1], z2, rtol=0, atol=1e-14)
    both = np.concatenate([z1, z2])
    assert abs(both.mean()) < 0.05 and abs(both.std() - 1) < 0.03 and abs(np.corrcoef(z1, z2)[0, 1]) < 0.05


def test_the_kernels_cache_key_follows_the_sources_compiled_in():
    """numba's disk cache checks only a kernel's own file; the key argument (core/jit.py) changes with
    the source text of every form and module compiled in, and with the order of a table."""
    from neurohw.core import jit

    def form(a):
        return a

    def edited(a):
        return a + 0.0

    key = lambda *objects: jit.sources_key(*objects).dtype
    assert key(rng, form) == key(rng, form) and key(rng, form) != key(rng, edited) and key(form) != key(rng, form)
    assert key("tanh,elu", form) != key("elu,tanh", form) and key(None) != key(form)
    assert jit.sources_key(form).size == 0 and kernels.SOURCES.dtype.names[0].startswith("sources_sha256_")


def test_polar_normals_match_between_numpy_and_numba():
    """The polar method takes the same attempts in the kernel and in numpy (the accept test uses no
    transcendental function) and gives independent standard normals: moments at n = 8,192 pairs
    (standard errors 0.008 on a mean and std, 0.011 on a correlation)."""
    from numba import njit

    @njit
    def draw(keys):
        out = np.empty((keys.shape[0], 2))
        for j in range(keys.shape[0]):
            out[j, 0], out[j, 1] = rng_kernels.polar_pair(keys[j])
        return out

    k = rng.key(5, 1, 2, np.arange(8192, dtype=np.uint64))
    z1, z2 = rng.polar_pair(k)
    ours = draw(k)
    np.testing.assert_allclose(ours[:, 0], z1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(ours[:, 1], z2, rtol=0, atol=1e-14)
    both = np.concatenate([z1, z2])
    assert abs(both.mean()) < 0.04 and abs(both.std() - 1) < 0.03 and abs(np.corrcoef(z1, z2)[0, 1]) < 0.05
    assert abs(np.mean(both**4) - 3) < 0.25  # Gaussian kurtosis (a uniform-ish law would give ≈ 1.8)


def test_ziggurat_tables_solve_the_defining_equations():
    """The 256 layers (rng module doc) have the common area v to 1e-12 relative: the base layer
    (rectangle up to r plus the tail), every layer i ≥ 1 (width x_i, heights f(x_i)…f(x_{i+1})) and the
    top one, which closes at x = 0; the edges decrease; the thresholds and widths derive from them."""
    import math

    n, r, v, x = rng.ZIG_LAYERS, rng.ZIG_R, rng.ZIG_V, rng.ZIG_X
    assert x.shape == (n + 1,) and x[1] == r and x[n] == 0.0 and np.all(np.diff(x) < 0)
    f_r = math.exp(-0.5 * r * r)
    tail = math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    assert abs(r * f_r + tail - v) <= 1e-15 * v and abs(x[0] * f_r - v) <= 1e-15 * v
    g = [math.expm1(-0.5 * t * t) for t in x]  # f − 1, exact near the top
    areas = np.array([x[0] * f_r] + [x[i] * (g[i + 1] - g[i]) for i in range(1, n)])
    np.testing.assert_allclose(areas, v, rtol=1e-12, atol=0)
    assert 1 < n * v / math.sqrt(math.pi / 2) < 1.01  # covers the half-normal; < 1 % of attempts rejected
    ratio = x[1:] / x[:-1]
    assert np.all(rng.ZIG_K == [math.ceil(math.ldexp(q, 53)) for q in ratio]) and rng.ZIG_K[-1] == 0
    np.testing.assert_array_equal(rng.ZIG_WS, np.concatenate([x[:-1], -x[:-1]]) * 2.0**-53)
    np.testing.assert_allclose(rng.ZIG_D, np.exp(-0.5 * x[1:] ** 2) - np.exp(-0.5 * x[:-1] ** 2), rtol=1e-12)


def _zig_keys():
    """200,000 consecutive keys, plus keys found by scanning 2,000,000 more for every rare branch."""
    plain = rng.key(5, 1, 2, np.arange(200_000, dtype=np.uint64))
    scan = rng.key(6, np.arange(2_000_000, dtype=np.uint64))
    _, rejected, how = rng.zig_paths(scan)
    rare = [(how == 1) & (rejected == 0), rejected == 1, rejected >= 2, how == 2, how == 3]
    return np.concatenate([plain] + [scan[m][:50] for m in rare])


def test_ziggurat_normals_match_between_numpy_and_numba():
    """The kernel's _zig_normal returns numpy's zig_normal bit for bit (sign of zero included) on every
    branch: the fast path, wedge accept, wedge reject → next attempt, the tail and its retries."""
    import math

    from numba import njit

    @njit
    def draw(keys):
        out = np.empty(keys.shape[0])
        for j in range(keys.shape[0]):
            out[j] = rng_kernels.zig_normal(keys[j])
        return out

    @njit
    def libm(a):
        out = np.empty((2, a.shape[0]))
        for j in range(a.shape[0]):
            out[0, j], out[1, j] = np.exp(-a[j]), np.log(a[j])
        return out

    # the rare branches need the kernel's exp/log to be math's (libm's; numpy's own differ in the last bit)
    a = np.random.default_rng(0).random(100_000) * 8.0
    np.testing.assert_array_equal(libm(a), [rng._libm(math.exp, -a), rng._libm(math.log, a)])
    keys = _zig_keys()
    z, rejected, how = rng.zig_paths(keys)
    assert (how == 0).mean() > 0.98  # the fast path
    assert ((how == 1) & (rejected == 0)).sum() >= 50  # wedge accept
    assert (rejected == 1).sum() >= 50 and (rejected >= 2).sum() >= 10  # wedge reject → next attempt(s)
    assert (how == 2).sum() >= 50 and (how == 3).sum() >= 5  # the tail, at its first try and after a rejected one
    np.testing.assert_array_equal(draw(keys).view(np.uint64), z.view(np.uint64))
    m = len(keys) // 7 * 7  # any shape: the same draws element by element
    np.testing.assert_array_equal(rng.zig_normal(keys[:m].reshape(-1, 7)).ravel().view(np.uint64), z[:m].view(np.uint64))


def test_ziggurat_draws_are_standard_normal():
    """10⁶ draws: mean, variance, skewness and excess kurtosis within 5 standard errors (1/√n, √(2/n),
    √(6/n), √(24/n)); the Kolmogorov–Smirnov distance to Φ below its 0.1 % critical value
    √(ln(2/0.001)/2)/√n; the frequencies of |z| > 3, > r (the tail branch), > 4 within 5 binomial σ."""
    import math

    n = 1_000_000
    z = rng.zig_normal(rng.key(9, np.arange(n, dtype=np.uint64)))
    m = z.mean()
    c = z - m
    var = (c * c).mean()
    skew = (c**3).mean() / var**1.5
    kurt = (c**4).mean() / var**2 - 3.0
    assert abs(m) < 5 / math.sqrt(n)
    assert abs(var - 1) < 5 * math.sqrt(2 / n)
    assert abs(skew) < 5 * math.sqrt(6 / n)
    assert abs(kurt) < 5 * math.sqrt(24 / n)
    cdf = np.frompyfunc(lambda t: 0.5 * (1.0 + math.erf(t / math.sqrt(2.0))), 1, 1)(np.sort(z)).astype(np.float64)
    i = np.arange(1, n + 1)
    ks = max((i / n - cdf).max(), (cdf - (i - 1) / n).max())
    assert ks < math.sqrt(math.log(2 / 1e-3) / 2) / math.sqrt(n)
    for t in (3.0, rng.ZIG_R, 4.0):
        p = math.erfc(t / math.sqrt(2))
        assert abs((np.abs(z) > t).sum() - n * p) < 5 * math.sqrt(n * p * (1 - p)), t


def test_adjacent_read_outputs_are_uncorrelated():
    """The per-read noise of outputs j and j + 1 of one read (keys mix(base ⊕ j), one normal each):
    correlation below 5/√(pairs), over 2,000 reads of 500 outputs; and std 1 for out_noise = 1."""
    z = twin.noisy(np.zeros((2000, 500)), np.zeros(2000), 1.0, PeripheralConfig(out_noise=1.0), 4, np.arange(2000),
                   3, 1, twin.READ_FORWARD, 2)
    a, b = z[:, :-1].ravel(), z[:, 1:].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
    assert abs(z.std() - 1) < 5 * np.sqrt(0.5 / z.size)

PERIPHERALS = {
    "ideal": PeripheralConfig(),
    "noise": PeripheralConfig(w_noise=0.03, out_noise=0.01),
    "full": PeripheralConfig(dac_bits=6, adc_bits=7, inp_bound=1.0, out_bound=2.0, w_noise=0.02, out_noise=0.01),
}


@pytest.mark.parametrize("kind", ["fc", "ce", "cvf"])
@pytest.mark.parametrize("integrator", ["euler", "rk4"])
@pytest.mark.parametrize("periph", list(PERIPHERALS))
def test_kernel_equals_numpy_twin(kind, integrator, periph):
    """Same inputs, same counter-based noise: the kernel's states equal the twin's to rounding
    (the sums run in different orders; 1e-12 covers ~100 float64 accumulations of O(1) terms)."""
    spec = small(kind, "tanh" if kind == "cvf" else "sigmoid4")
    cb = crossbars_from_spec(spec)
    sub = SubstrateConfig(integrator=integrator, dt_s=1e-7, t_max_s=8e-6, settle_tol=1e-5, seed=3)
    per = PERIPHERALS[periph]
    x = np.random.default_rng(0).random((7, 16))
    ids = np.arange(100, 107)
    a_states, a_steps, a_out = kernels.relax(cb, sub, per, x, ids)
    b_states, b_steps, b_out = twin.relax(cb, sub, per, x, ids)
    assert np.array_equal(a_steps, b_steps)
    for a, b in zip(a_states, b_states):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a_out, b_out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_kernel_equals_numpy_twin_for_every_activation(activation):
    """Every registered activation runs in the kernel (its registry form, at its index) as in the twin."""
    cb = crossbars_from_spec(small("fc", activation, seed=3))
    sub = SubstrateConfig(integrator="rk4", dt_s=1e-7, t_max_s=4e-6, settle_tol=1e-5, seed=1)
    x = np.random.default_rng(1).random((5, 16))
    a_states, a_steps, a_out = kernels.relax(cb, sub, PERIPHERALS["full"], x, np.arange(5))
    b_states, b_steps, b_out = twin.relax(cb, sub, PERIPHERALS["full"], x, np.arange(5))
    assert np.array_equal(a_steps, b_steps)
    for a, b in zip(a_states + [a_out], b_states + [b_out]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_read_noise_has_the_std_of_weight_plus_output_noise():
    """R(W, v) − W v over 40,000 reads: mean 0, per-output std √((w_noise·max|W|·‖v‖)² + out_noise²)
    (eq. read), independent between outputs (each draws its own Ziggurat normal). Standard
    errors at n = 40,000: 0.5 % on a std, 0.005 on a correlation; asserted at ~4 standard errors."""
    g = np.random.default_rng(0)
    w, v = g.standard_normal((5, 7)), g.random(7)
    per = PeripheralConfig(w_noise=0.03, out_noise=0.02)
    ids = np.arange(40_000)
    w_max = float(np.abs(w).max())
    r = twin.read(w, np.tile(v, (len(ids), 1)), w_max, per, 3, ids, 7, 0, twin.READ_FORWARD, 1)
    z = r - w @ v
    sigma = np.sqrt((0.03 * w_max * np.linalg.norm(v)) ** 2 + 0.02**2)
    assert np.abs(z.mean(0)).max() < 4 * sigma / np.sqrt(len(ids))
    np.testing.assert_allclose(z.std(0) / sigma, 1.0, atol=0.02)
    c = np.corrcoef(z.T)
    assert np.abs(c[~np.eye(5, dtype=bool)]).max() < 0.02


def test_noise_depends_on_the_sample_not_the_batching():
    spec = small()
    sc = Scenario(SubstrateConfig(t_max_s=5e-6, batch_size=3), PeripheralConfig(w_noise=0.05))
    x = np.random.default_rng(1).random((8, 16))
    whole = AnalogSubstrate(sc).run(spec, x).outputs
    parts = np.concatenate([AnalogSubstrate(sc).run(spec, x[:5]).outputs, AnalogSubstrate(sc).run(spec, x[5:], first_id=5).outputs])
    np.testing.assert_array_equal(whole, parts)


@pytest.mark.parametrize("kind", ["fc", "ce"])
def test_ideal_crossbar_settles_to_the_torch_fixed_point(kind):
    """With ideal devices and a small dt the continuous-time fixed point is the discrete one: the
    settled states agree with the torch substrate's converged free phase to the settling tolerance."""
    spec = small(kind, "sigmoid4", seed=2)
    x = np.random.default_rng(2).random((20, 16)).astype(np.float32)
    ref = TorchSubstrate(dtype=torch.float64).run(spec, x).outputs
    sc = Scenario(SubstrateConfig(integrator="rk4", dt_s=2e-7, t_max_s=2e-4, settle_tol=1e-10))
    trace = AnalogSubstrate(sc).run(spec, x)
    assert trace.steps.max() < sc.substrate.max_steps  # every sample settled
    np.testing.assert_allclose(trace.outputs, ref, atol=1e-7)


def test_bad_scenarios_fail_before_simulating(tmp_path):
    with pytest.raises(ConfigError, match="dt_s.*too large.*euler"):
        load_scenario(None, ["substrate.dt_s=2e-6"])
    with pytest.raises(ConfigError, match="adc_bits"):
        load_scenario(None, ["peripherals.adc_bits=-3"])
    with pytest.raises(ConfigError, match="out_bound must be > 0 with an ADC"):
        load_scenario(None, ["peripherals.adc_bits=8"])
    with pytest.raises(ConfigError, match=r"peripherals.dac_bit.*did you mean 'peripherals.dac_bits'"):
        load_scenario(None, ["peripherals.dac_bit=8"])
    with pytest.raises(ConfigError, match="g_min < g_max"):
        load_scenario(None, ["device.g_min_uS=5", "device.g_max_uS=1"])
    card = tmp_path / "s.toml"
    card.write_text("[substrate]\ntau = 1.0\n")
    with pytest.raises(ConfigError, match=r"substrate.tau.*s.toml"):
        load_scenario(card)
    conv = to_spec(build_net(NetConfig(architecture="conv", channels=(2,), kernel_sizes=(3,), hidden=()), (1, 6, 6), 3), **META)
    with pytest.raises(ConfigError, match="conv2d"):
        crossbars_from_spec(conv)


def test_simulate_writes_the_report(tmp_path, mnist_small):
    """End to end on real MNIST images: a small trained-like net exported, simulated, reported."""
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(hidden=(20,), activation="sigmoid4"), (1, 28, 28), 10, generator=g)
    spec = to_spec(net, T_free=60, T_nudge=5, beta=0.1, image_shape=(1, 28, 28), input_mean=(0.0,), input_std=(1.0,))
    save_spec(spec, tmp_path / "n.h5")
    out = tmp_path / "report.json"
    assert main(["simulate", str(tmp_path / "n.h5"), "--sim", "sims/ideal.toml", "--n", "40", "--out", str(out),
                 "substrate.integrator=rk4", "substrate.dt_s=2e-7", "substrate.settle_tol=1e-9"]) == 0
    r = json.loads(out.read_text())
    for key in ("accuracy", "reference_accuracy", "n_samples", "wall_s", "agreement", "settling_time_s", "scenario"):
        assert key in r
    assert r["n_samples"] == 40 and r["agreement"] == 1.0 and r["accuracy"] == r["reference_accuracy"]


# ------------------------------------------------------------------------------ inference noise
from neurohw.devices.inference import NoiseConfig, drift_nu_stats, pcm_conductances, prog_sigma_uS, read_noise_q  # noqa: E402
from neurohw.devices.mapping import DeviceProfile  # noqa: E402


def test_pcm_programming_noise_drift_and_read_noise_follow_the_model():
    n = 200_000
    g_t = np.full(n, 10.0)
    g_hat = 10.0 / 25.0
    only_prog = NoiseConfig(model="pcm", t_inference_s=20.0, drift=False, read_noise=False)
    g0, _ = pcm_conductances(g_t, only_prog, np.random.default_rng(0))
    assert abs(g0.std() / prog_sigma_uS(np.array(g_hat), only_prog.prog_coeff) - 1) < 0.01
    drift = NoiseConfig(model="pcm", t_inference_s=86400.0, read_noise=False)
    g0, gt = pcm_conductances(g_t, drift, np.random.default_rng(1))
    nu = -np.log(gt / g0) / np.log(86400.0 / 20.0)
    mu, sd = drift_nu_stats(np.array(g_hat))
    assert abs(nu.mean() - mu) < 0.002 and abs(nu.std() - sd) < 0.002
    read = NoiseConfig(model="pcm", t_inference_s=86400.0, drift=False)
    g0r, gtr = pcm_conductances(g_t, read, np.random.default_rng(2))
    sigma = g0r * read_noise_q(np.array(g_hat)) * np.sqrt(np.log((86400.0 + 250e-9) / (2 * 250e-9)))
    assert abs((gtr - g0r).std() / sigma.mean() - 1) < 0.01


def test_drift_compensation_restores_the_scale_and_draws_are_seeded():
    spec = small("fc", seed=4)
    profile = DeviceProfile()
    drift_only = NoiseConfig(model="pcm", t_inference_s=1e6, read_noise=False, prog_coeff=(0.0, 0.0, 0.0))
    plain = crossbars_from_spec(spec, profile)
    comp = crossbars_from_spec(spec, profile, drift_only, seed=1)
    raw = crossbars_from_spec(spec, profile, NoiseConfig(**{**drift_only.__dict__, "drift_compensation": False}), seed=1)
    for w, wc, a in zip(plain.forward, comp.forward, comp.alpha):
        shrink = np.abs(wc.sum(1)).sum() / np.abs(w.sum(1)).sum()
        assert shrink < 0.8 and abs(a * shrink - 1) < 1e-6  # drift shrinks, α undoes it (float32 targets)
    assert raw.alpha == [1.0] * len(raw.alpha)
    again = crossbars_from_spec(spec, profile, drift_only, seed=1)
    other = crossbars_from_spec(spec, profile, drift_only, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(comp.forward, again.forward))
    assert not all(np.array_equal(a, b) for a, b in zip(comp.forward, other.forward))
    with pytest.raises(ConfigError, match="needs conductances"):
        crossbars_from_spec(spec, None, drift_only)
    assert load_scenario("sims/pcm_1day.toml").noise.t_inference_s == 86400.0


@pytest.mark.parametrize("kind", ["fc", "ce", "cvf"])
@pytest.mark.parametrize("nudge", ["inside", "outside"])
def test_euler_with_dt_equal_tau_is_the_discrete_engine(kind, nudge):
    """Euler with Δt = τ gives s ← ρ(u): the analog twin then computes eq. dyn exactly, free and
    nudged — the same numbers as the torch engine in float64."""
    import torch

    from neurohw.dynamics import relax
    from neurohw.nets.convert import from_spec

    spec = small(kind, "sigmoid4" if kind != "cvf" else "tanh", seed=6)
    spec = spec.with_(nudge=nudge)
    net = from_spec(spec, torch.float64)
    x = np.random.default_rng(0).random((5, 16))
    y = np.eye(5)[[0, 1, 2, 3, 4]]
    cb = crossbars_from_spec(spec)
    sub = SubstrateConfig(dt_s=1e-6, tau_s=1e-6)
    per = PeripheralConfig()
    ids = np.arange(5)
    s_free, _, _ = twin.relax(cb, sub, per, x, ids, steps=12)
    s_nudged, _, _ = twin.relax(cb, sub, per, x, ids, s0=s_free, y=y, beta=0.4, steps=6, phase=1)
    with torch.no_grad():
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        ref_free = relax(net, net.input_drive(xt), net.init_state(xt), 12)
        ref_nudged = relax(net, net.input_drive(xt), ref_free, 6, yt, 0.4)
    for a, b in zip(s_free + s_nudged, ref_free + ref_nudged):
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-12)


def test_sweep_equals_single_simulations(tmp_path):
    from neurohw.simulate import simulate, sweep

    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(hidden=(12,), activation="sigmoid4"), (1, 28, 28), 10, generator=g)
    save_spec(to_spec(net, T_free=60, T_nudge=5, beta=0.1, image_shape=(1, 28, 28), input_mean=(0.0,), input_std=(1.0,)),
              tmp_path / "n.h5")
    reports = sweep(tmp_path / "n.h5", "sims/ideal.toml", "peripherals.adc_bits", [4, 8], n=30,
                    overrides=["peripherals.out_bound=4.0"])
    single = simulate(tmp_path / "n.h5", "analog", "sims/ideal.toml", 30, ["peripherals.out_bound=4.0", "peripherals.adc_bits=4"])
    assert [r["sweep"]["value"] for r in reports] == [4, 8]
    assert reports[0]["accuracy"] == single["accuracy"] and reports[0]["agreement"] == single["agreement"]
    with pytest.raises(ConfigError, match="adc_bits"):
        sweep(tmp_path / "n.h5", "sims/ideal.toml", "peripherals.adc_bits", [8, -1], n=30, overrides=["peripherals.out_bound=4.0"])


def test_analog_bench_reports_both_engines(tmp_path):
    from neurohw.bench import run_analog_bench

    net = build_net(NetConfig(hidden=(12,), activation="sigmoid4"), (1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
    save_spec(to_spec(net, T_free=60, T_nudge=5, beta=0.1, image_shape=(1, 28, 28), input_mean=(0.0,), input_std=(1.0,)),
              tmp_path / "n.h5")
    r = run_analog_bench(tmp_path / "n.h5", "sims/ideal.toml", n=8, threads=1, overrides=["substrate.t_max_s=2e-6"])
    assert r["kernel_inferences_per_s"] > 0 and r["twin_inferences_per_s"] > 0
    assert r["kernel_accuracy"] == r["twin_accuracy"]  # the same numbers, noise included
