"""DTP against backprop (docs/math.md §DTP): exact where the theory says so, ordered where it does not.

* With every G_n the exact transpose of a linear connection (identity activation; for a conv layer the
  transposed convolution of the max-unpooled state, which is the exact transposed Jacobian of a linear
  conv + max-pool at the clean pass's indices), eq. DTP-t propagates t^{n−1} − s^{n−1} = J_nᵀ(t^n − s^n)
  exactly, so DTP's update is β × the BP gradient of the mean loss, to round-off (float64, ~1e-16;
  asserted to 1e-6 relative to the gradient's size, the issue's tolerance).
* After feedback training on a small non-invertible MLP, L-DRL's updates are within 10° of BP in every
  layer and the angles are ordered L-DRL < DRL < DTP (the paper's Fig. of angles to BP).
* For a linear F and a linear G, L-DRL's expected loss is σ²(‖V − Wᵀ‖² − ‖W‖²): its gradient vanishes
  at V = Wᵀ and training converges there, while vanilla DTP's reconstruction loss does not.
* DRL's feedback gradient equals that of Meulemans et al. 2020's difference reconstruction loss, written
  here independently of the learner, on the same noise draws (to round-off).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurohw.config import NetConfig
from neurohw.learning import DTP
from neurohw.learning.dtp import _angle_deg
from neurohw.nets.build import build_net

ARCHS = {
    "fc-ce": (NetConfig(hidden=(12, 10, 8), cost="ce_readout"), (1, 4, 4)),
    "fc-mse": (NetConfig(hidden=(12, 9), cost="mse"), (1, 4, 4)),
    "conv-ce": (
        NetConfig(architecture="conv", channels=(3, 4), kernel_sizes=(3, 3), paddings=(1, 0), pools=("max2", "avg2"),
                  hidden=(7,), cost="ce_readout"),
        (2, 10, 10),
    ),
    "conv-none-mse": (
        NetConfig(architecture="conv", channels=(3,), kernel_sizes=(3,), strides=(2,), pools=("none",), hidden=(), cost="mse"),
        (1, 9, 9),
    ),
}


def make(arch: str, activation: str, seed: int = 0, batch: int = 6, n_out: int = 5):
    cfg, shape = ARCHS[arch]
    cfg = NetConfig(**{**cfg.__dict__, "activation": activation})
    g = torch.Generator().manual_seed(seed)
    net = build_net(cfg, shape, n_out, generator=g).double()
    x = torch.randn(batch, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, n_out, (batch,), generator=g), n_out).double()
    return net, x, y


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("beta", [0.05, 0.7])
def test_transposed_feedback_gives_beta_times_the_bp_gradient(arch, beta):
    net, x, y = make(arch, "identity")
    learner = DTP(beta, "ldrl")
    learner.set_feedback_to_transpose(net)
    with torch.enable_grad():
        outs, ctxs = learner.forward(net, x)
    dtp = learner.update(net, outs, ctxs, y)
    bp = torch.autograd.grad(net.loss(net.feedforward(x), y).mean(), net.param_list())
    scale = max(float(b.abs().max()) for b in bp)
    for d, b in zip(dtp, bp):
        assert d.shape == b.shape
        assert float((d - beta * b).abs().max()) <= 1e-6 * beta * scale
    metrics = learner.epoch_metrics(net, x, y)
    assert max(metrics["angles_to_bp_deg"]) < 1e-3
    assert max(metrics["jacobian_angles_deg"]) < 1e-3  # G's Jacobian is F's transposed Jacobian


def test_random_feedback_is_not_bp():
    """The same check fails without the transpose: the test above can fail."""
    net, x, y = make("fc-ce", "identity")
    learner = DTP(0.1, "ldrl")
    learner.setup(net)
    metrics = learner.epoch_metrics(net, x, y)
    assert min(metrics["angles_to_bp_deg"][:-1]) > 20.0 and metrics["angles_to_bp_deg"][-1] < 1e-3


def _small_mlp():
    """20-16-16-16-5, ELU, CE readout: narrowing, non-invertible layers; seeded data."""
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(hidden=(16, 16, 16), activation="elu", cost="ce_readout"), (1, 4, 5), 5, generator=g).double()
    x = torch.randn(64, 20, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 5, (64,), generator=g), 5).double()
    return net, x, y


def test_angles_to_bp_after_feedback_training_are_small_for_ldrl_and_ordered():
    """1,000 feedback steps per layer (σ 0.1, lr 0.1, momentum 0.9) at fixed forward weights. Measured
    (2026-11-29): L-DRL 6.2/3.6/3.2°, DRL 54/40/24°, DTP 68/55/38° on the three hidden layers."""
    angles = {}
    for kind in ("ldrl", "drl", "dtp"):
        net, x, y = _small_mlp()
        learner = DTP(0.1, kind, fb_iters=(100,), fb_noise=(0.1,), fb_lrs=(0.1,), seed=1)
        for _ in range(10):
            learner.train_feedback(net, x)
        angles[kind] = learner.epoch_metrics(net, x, y)["angles_to_bp_deg"]
    assert all(a <= 10.0 for a in angles["ldrl"]), angles
    for kind in angles:
        assert angles[kind][-1] < 1e-3  # the output layer's update is β × its BP gradient by construction
    for layer in range(3):
        assert angles["ldrl"][layer] < angles["drl"][layer] < angles["dtp"][layer], angles


def _linear_pair(batch: int):
    """A linear readout F(x) = Wx + b (6 → 4) with its linear feedback G(t) = Vt + c."""
    g = torch.Generator().manual_seed(3)
    net = build_net(NetConfig(hidden=(6,), activation="identity", cost="ce_readout"), (1, 2, 4), 4, generator=g).double()
    x = torch.randn(batch, 8, generator=g, dtype=torch.float64)
    return net, x


def _fb_grad(learner, net, x, weight):
    G = learner.feedback[1]
    with torch.no_grad():
        G.weight.copy_(weight)
        outs, ctxs = learner.forward(net, x)
    loss = learner.feedback_loss(net, 1, [x, *outs[:-1]], outs, ctxs)
    return torch.autograd.grad(loss, G.weight)[0]


def test_ldrl_gradient_vanishes_at_the_transpose_of_a_linear_layer():
    """E[∂L/∂V] = 2σ²(V − Wᵀ): on 40,000 noise samples the gradient at V = Wᵀ is ≲ 1 % of that at V = 0
    (its standard deviation is ≈ √(2/n) ≈ 0.7 % of it)."""
    net, x = _linear_pair(40_000)
    learner = DTP(0.1, "ldrl", fb_noise=(0.3,), seed=0)
    learner.setup(net)
    W = net.layers[1].weight.detach()
    at_transpose = _fb_grad(learner, net, x, W.t())
    at_zero = _fb_grad(learner, net, x, torch.zeros_like(W.t()))
    assert torch.allclose(at_zero, -2 * 0.3**2 * W.t(), rtol=0.05, atol=0.05 * float(W.abs().max()) * 2 * 0.09)
    assert float(at_transpose.norm()) < 0.03 * float(at_zero.norm())


def test_ldrl_training_converges_to_the_transpose_and_vanilla_dtp_does_not():
    net, x = _linear_pair(4096)
    W = net.layers[1].weight.detach()
    out = {}
    for kind in ("ldrl", "dtp"):
        learner = DTP(0.1, kind, fb_iters=(100,), fb_noise=(0.3,), fb_lrs=(0.2,), seed=0)
        for _ in range(10):
            learner.train_feedback(net, x)
        out[kind] = learner.feedback[1].weight.detach()
    assert _angle_deg(out["ldrl"], W.t()) < 2.0
    assert float((out["ldrl"] - W.t()).norm() / W.norm()) < 0.05
    assert _angle_deg(out["dtp"], W.t()) > 10.0  # the reconstruction loss learns an inverse, not the transpose


def meulemans_drl_loss(forward, feedback, feedback_activations, ins, outs, i, eps, sigma):
    """Meulemans et al. 2020's difference reconstruction loss of the feedback map of layer i (0-based),
    written from their equation and their code (`DTPDRLNetwork.compute_feedback_gradients`,
    `DTPDRLLayer.compute_feedback_gradients`, `DTPLayer.backward`) on plain tensors:

        h̃ = h_{i−1} + σε,    r = g^diff_{N→i}(f_{i…N}(h̃)),    L = (1/σ²) · mean_{b,j} (h_{i−1} + g_i(r) − g_i(h_i) − h̃)²

    with g^diff the difference-corrected propagation h_{k−1} + g_k(h) − g_k(h_k) from the output down to
    layer i, f_k(v) = ρ_k(v W_kᵀ + b_k) and, as in eq. DTP-G (the library's parametrisation of G; theirs
    is ρ(Q t + d)), g_k(t) = ρ_k(t) A_kᵀ + c_k. `eps` is the draw σε. Here h_{i−1} = ins[i], h_k = outs[k].
    """
    def f(k, v):
        W, b, act = forward[k]
        return act(v @ W.t() + b)

    def g(k, t):
        A, c = feedback[k]
        return feedback_activations[k](t) @ A.t() + c

    corrupted = ins[i] + eps
    v = corrupted
    for k in range(i, len(forward)):
        v = f(k, v)
    for k in range(len(forward) - 1, i, -1):
        v = outs[k - 1] + g(k, v) - g(k, outs[k])
    reconstructed = ins[i] + g(i, v) - g(i, outs[i])
    return F.mse_loss(reconstructed, corrupted) / sigma**2


def test_drl_feedback_gradient_is_meulemans_difference_reconstruction_loss():
    """∂/∂(A_n, c_n) of `feedback_loss` with kind "drl" against `meulemans_drl_loss` on the same noise
    draw, for every trained feedback layer of the 20-16-16-16-5 ELU/CE MLP, with a different σ per layer.

    The learner's loss is Meulemans's times σ_n² · size_{n−1} (per-sample sums instead of the mean over
    batch and units, and no 1/σ², docs/math.md eq. DRL), so the gradients must agree after that factor,
    to float64 round-off: measured 1.1e-14, 2.0e-15, 5.7e-16 (layers 2, 3, 4; max-abs error / max |grad|),
    asserted 1e-12.

    Guards DRL's difference corrections (dropping `− G_k(s^k)` on the way down, or the `x + … − G_n(s^n)`
    of the last step, changes the loss at O(1)), the direction of the chain (which G and which states
    each correction uses) and that only G_n is trained by its loss. The noise draws are recorded from the
    learner's own generator, so the test follows the learner's draws whatever their order."""
    net, x, y = _small_mlp()
    sigmas = (0.1, 0.2, 0.3)
    learner = DTP(0.1, "drl", fb_noise=sigmas, seed=1)
    learner.setup(net)
    learner.train_feedback(net, x[:16])  # move G away from its initialisation (a few SGD steps)
    with torch.no_grad():
        outs, ctxs = learner.forward(net, x)
    ins = [x, *outs[:-1]]
    draws, real_noise = [], learner._noise

    def recorded_noise(like, sigma):
        eps = real_noise(like, sigma)
        draws.append((eps.clone(), sigma))
        return eps

    learner._noise = recorded_noise

    identity = lambda t: t
    acts = [F.elu if k < net.n_states else identity for k in range(len(net.layers))]
    forward = [(l.weight.detach(), l.bias.detach(), a) for l, a in zip(net.layers, acts)]
    for i in range(1, len(net.layers)):
        G = learner.feedback[i]
        draws.clear()
        got = torch.autograd.grad(learner.feedback_loss(net, i, ins, outs, ctxs), [G.weight, G.bias])
        (eps, sigma), = [(e, s) for e, s in draws if e.shape == ins[i].shape]  # DRL draws ε only
        assert sigma == sigmas[i - 1]
        A, c = G.weight.detach().clone().requires_grad_(True), G.bias.detach().clone().requires_grad_(True)
        feedback = [None] + [(g.weight.detach(), g.bias.detach()) for g in learner.feedback[1:]]
        feedback[i] = (A, c)
        loss = meulemans_drl_loss(forward, feedback, acts, ins, outs, i, eps, sigma)
        want = torch.autograd.grad(loss, [A, c])
        factor = sigma**2 * ins[i][0].numel()
        scale = max(float(w.abs().max()) for w in want) * factor
        error = max(float((a - factor * b).abs().max()) for a, b in zip(got, want)) / scale
        assert error < 1e-12, (f"layer {i + 1}", error)
