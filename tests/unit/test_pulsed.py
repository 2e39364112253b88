"""Pulsed-update device laws and aihwkit-style stochastic pulse trains (docs/math.md §12)."""

from __future__ import annotations

import numpy as np
import pytest

from neurohw.devices.pulsed import LAWS, PulsedArray, PulsedDeviceConfig, UpdateConfig, pulse_counts
from neurohw.errors import ConfigError

IDEAL = dict(dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0, w_max_dtod=0.0, w_min_dtod=0.0, gamma_up_dtod=0.0, gamma_down_dtod=0.0)


def array(law="constant_step", shape=(3, 4), seed=0, **kw):
    return PulsedArray(PulsedDeviceConfig(law=law, **kw), shape, np.random.default_rng(seed))


def test_constant_step_counts_pulses_and_clips_at_the_bound():
    a = array(dw_min=0.01, w_max=0.1, w_min=-0.1, **IDEAL)
    rng = np.random.default_rng(0)
    a.pulse(np.full(a.shape, 7), np.ones(a.shape, bool), rng)
    np.testing.assert_allclose(a.w, 0.07)
    a.pulse(np.full(a.shape, 20), np.ones(a.shape, bool), rng)
    np.testing.assert_allclose(a.w, 0.1)
    a.pulse(np.full(a.shape, 3), np.zeros(a.shape, bool), rng)
    np.testing.assert_allclose(a.w, 0.07)


def test_soft_bounds_approach_the_bound_geometrically_and_have_a_symmetry_point():
    a = array("soft_bounds", dw_min=0.01, w_max=1.0, w_min=-1.0, **IDEAL)
    a.pulse(np.full(a.shape, 50), np.ones(a.shape, bool), np.random.default_rng(0))
    np.testing.assert_allclose(a.w, 1.0 - (1.0 - 0.01) ** 50, rtol=1e-12)
    b = array("soft_bounds", dw_min=0.01, w_max=1.0, w_min=-0.5, up_down=0.2, **IDEAL)
    rng = np.random.default_rng(1)
    for _ in range(3000):  # alternate up and down pulses: w → the symmetry point
        b.pulse(np.ones(b.shape, int), np.ones(b.shape, bool), rng)
        b.pulse(np.ones(b.shape, int), np.zeros(b.shape, bool), rng)
    up, down = b.step_up[0, 0], b.step_down[0, 0]
    w_star = (up - down) / (up / b.b_max[0, 0] - down / b.b_min[0, 0])
    assert abs(b.w[0, 0] - w_star) < 0.02


def test_d2d_draws_and_asymmetry_follow_aihwkit():
    a = array(shape=(300, 300), dw_min=0.001, up_down=0.1)
    assert abs(a.b_max.std() / 0.6 - 0.3) < 0.01 and abs(a.b_max.mean() - 0.6) < 0.01
    assert abs(np.median(a.step_up) / 0.001 - 1.0) < 0.01  # up_down > 0 shrinks only the down step
    assert abs(np.median(a.step_down) / 0.001 - 0.9) < 0.01


@pytest.mark.parametrize("law", ["linear_step", "exp_step", "pow_step"])
def test_step_shapes_shrink_towards_the_bounds(law):
    slopes = dict(gamma_up=0.5, gamma_down=0.5) if law == "linear_step" else {}
    a = array(law, shape=(1, 3), dw_min=0.01, w_max=1.0, w_min=-1.0, **slopes, **IDEAL)
    w = np.array([[-0.5, 0.0, 0.5]])
    up = a.shape_factor(w, True)
    down = a.shape_factor(w, False)
    assert np.all(np.diff(up[0]) < 0) and np.all(np.diff(down[0]) > 0)  # smaller steps nearer each bound


def test_stuck_devices_do_not_move():
    a = array(shape=(50, 50), corrupt_devices_prob=0.1)
    a.set_weights(np.full(a.shape, 0.3))
    a.pulse(np.full(a.shape, 5), np.ones(a.shape, bool), np.random.default_rng(0))
    assert 0.05 < a.stuck.mean() < 0.15
    assert np.all(a.b_min[a.stuck] == a.b_max[a.stuck])
    assert np.all(a.w[a.stuck] == np.clip(0.3, a.b_min[a.stuck], a.b_max[a.stuck]))


def test_pulse_trains_count_coincidences_like_aihwkit():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 40)
    d = rng.uniform(-1, 1, 30)
    lr, g = 0.002, 0.001  # k = lr·max|x|·max|d|/g ≈ 2: short trains
    mean = np.zeros((30, 40))
    trials = 4000
    for _ in range(trials):
        counts, up = pulse_counts(x, d, lr, g, UpdateConfig(), rng)
        mean += counts
        assert counts.max() <= 31
        np.testing.assert_array_equal(up, np.outer(d, x) < 0)  # W − lr·d xᵀ goes up where d·x < 0
    expected = lr * np.abs(np.outer(d, x)) / g
    assert np.abs(mean / trials - expected).max() < 0.08
    big, _ = pulse_counts(x, d, 1.0, g, UpdateConfig(), rng)  # k ≫ 31: clipped to 31 pulses
    assert big.max() <= 31 and big.max() >= 20


def test_bad_device_parameters_are_named():
    with pytest.raises(ConfigError, match="pulsed.law"):
        PulsedDeviceConfig(law="memristor")
    with pytest.raises(ConfigError, match="pulsed.dw_min"):
        PulsedDeviceConfig(dw_min=0.0)
    with pytest.raises(ConfigError, match="w_min ≤ 0 ≤ pulsed.w_max"):
        PulsedDeviceConfig(w_min=0.2, w_max=0.6)


# ------------------------------------------------------------------ pulse kernels vs numpy twin
from neurohw.devices.pulse_kernels import outer_update  # noqa: E402


@pytest.mark.parametrize("law", LAWS)  # every registered law: its kernel form = its numpy form
def test_pulse_kernel_equals_numpy_twin(law):
    kw = dict(dw_min=0.01, write_noise_std=0.5, corrupt_devices_prob=0.05, up_down=0.1)
    if law == "linear_step":
        kw.update(gamma_up=0.3, gamma_down=0.2)
    rng = np.random.default_rng(3)
    xs, ds = rng.uniform(-1, 1, (4, 9)), rng.uniform(-1, 1, (4, 6))
    xs[0, 2] = 0.0
    a, b = array(law, shape=(6, 9), seed=5, **kw), array(law, shape=(6, 9), seed=5, **kw)
    w0 = rng.uniform(-0.3, 0.3, (6, 9))
    a.set_weights(w0), b.set_weights(w0)
    n_a = outer_update(a, xs, ds, 0.05, UpdateConfig(), seed=7, counter=11, engine="kernel")
    n_b = outer_update(b, xs, ds, 0.05, UpdateConfig(), seed=7, counter=11, engine="twin")
    assert n_a == n_b > 0
    np.testing.assert_allclose(a.w, b.w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.write_noise, b.write_noise, rtol=0, atol=1e-12)
    assert not np.allclose(a.w, w0)


def test_pulse_updates_follow_the_gradient_on_average():
    """Ideal constant-step devices: E[ΔW] = −lr·Σ_b d_b x_bᵀ (each coincidence moves dw_min)."""
    rng = np.random.default_rng(0)
    xs, ds = rng.uniform(-1, 1, (3, 12)), rng.uniform(-1, 1, (3, 8))
    lr = 0.004
    total = np.zeros((8, 12))
    for counter in range(300):
        a = array(shape=(8, 12), dw_min=0.001, w_max=1.0, w_min=-1.0, **IDEAL)
        outer_update(a, xs, ds, lr, UpdateConfig(), seed=1, counter=counter)
        total += a.w
    expected = -lr * sum(np.outer(d, x) for d, x in zip(ds, xs))
    assert np.abs(total / 300 - expected).max() < 0.15 * np.abs(expected).max()
