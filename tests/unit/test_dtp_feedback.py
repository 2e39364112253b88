"""The conv feedback losses' max-pool indices (`learner.fb_pool_indices`, docs/math.md eq. DTP-pool) and the
per-parameter / feedback-weight angles of DTP's `epoch_metrics` (eq. DTP-angles).

The reference below is written by hand on plain float64 tensors, independently of `neurohw.learning.dtp`:
the 2×2 max-pool takes its arg-max over explicit windows, the un-pooling scatters into zeros at those
positions, and the transposed convolution is the adjoint of `conv2d` obtained by autograd. It follows the
authors' `target_prop/feedback_loss.py` (ernoult/scalingDTP): G(F(x+ε)) un-pools at the noisy pass's
indices, G(F(x)) and the η term at the clean pass's ("noisy"); or G(F(x+ε)) at the clean ones too
("clean"). DRL's reconstruction is the target propagation and un-pools at the clean indices either way.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from neurohw.config import LearnerConfig, NetConfig, load_config
from neurohw.errors import ConfigError
from neurohw.learning import DTP, build_learner
from neurohw.learning.dtp import _angle_deg
from neurohw.nets.build import build_net
from neurohw.nets.layers import Dense
from neurohw.train import train
from tests.conftest import fake_splits

MODELS = Path(__file__).resolve().parents[2] / "models"
FAST = ["train.epochs=1", "train.batch_size=10", "data.limit_train=40", "data.limit_eval=20", "device=cpu", "learner.fb_iters=[3]"]

SIGMA = 0.3  # at this σ about a third of the pooled units of the small net change their arg-max (asserted)
CONV = NetConfig(architecture="conv", channels=(2, 3, 4), kernel_sizes=(3, 3, 3), paddings=(1, 1, 1),
                 pools=("max2", "max2", "max2"), hidden=(), activation="elu", cost="ce_readout")


def small_conv(seed: int = 0, batch: int = 5):
    """16×16 → conv(2) 8×8 → conv(3) 4×4 → conv(4) 2×2 → readout(3): two max-pooled conv layers with a G."""
    g = torch.Generator().manual_seed(seed)
    net = build_net(CONV, (1, 16, 16), 3, generator=g).double()
    x = torch.randn(batch, 1, 16, 16, generator=g, dtype=torch.float64)
    return net, x


# ------------------------------------------------------------------------------ the hand-written reference
def pool(y):
    """2×2 max-pool (floor) with the flat arg-max index in the H×W grid, over explicit windows."""
    B, C, H, W = y.shape
    h, w = H // 2, W // 2
    win = y[:, :, : 2 * h, : 2 * w].reshape(B, C, h, 2, w, 2).permute(0, 1, 2, 4, 3, 5).reshape(B, C, h, w, 4)
    val, k = win.max(-1)
    rows = 2 * torch.arange(h).view(h, 1) + torch.div(k, 2, rounding_mode="floor")
    cols = 2 * torch.arange(w).view(1, w) + k % 2
    return val, rows * W + cols


def unpool(t, idx, H, W):
    B, C = t.shape[:2]
    return torch.zeros(B, C, H * W, dtype=t.dtype).scatter(2, idx.flatten(2), t.flatten(2)).view(B, C, H, W)


def conv_adjoint(u, A, in_shape):
    """The transposed convolution: ∂⟨u, conv2d(v, A)⟩/∂v (padding 1, stride 1), differentiable in A."""
    with torch.enable_grad():
        v = torch.zeros(u.shape[0], *in_shape, dtype=u.dtype, requires_grad=True)
        (g,) = torch.autograd.grad(F.conv2d(v, A, padding=1), v, u, create_graph=True)
    return g


class Reference:
    """F_k and G_k of `small_conv` by hand; G's parameters are copies (the tested layer's require grad)."""

    def __init__(self, net, learner, i):
        self.net = net
        self.W = [(l.weight.detach(), l.bias.detach()) for l in net.layers]
        self.A = [None] + [(g.weight.detach().clone(), g.bias.detach().clone()) for g in learner.feedback[1:]]
        self.A[i] = tuple(p.requires_grad_(True) for p in self.A[i])
        self.n = len(net.layers)

    def f(self, k, v):
        """(F_k(v), its arg-max indices or None)."""
        W, b = self.W[k]
        if k == self.n - 1:  # the readout: affine, no activation
            return v.flatten(1) @ W.t() + b, None
        return pool(F.elu(F.conv2d(v, W, b, padding=1)))

    def g(self, k, t, idx):
        A, c = self.A[k]
        layer = self.net.layers[k]
        if isinstance(layer, Dense):  # G of the readout: A (in × out), identity activation
            return (t @ A.t() + c).view(-1, *layer.in_shape)
        H, W = layer.conv_shape[1:]
        return conv_adjoint(F.elu(unpool(t, idx, H, W)), A, layer.in_shape) + c.view(1, -1, 1, 1)

    def states(self, x):
        s, idx, v = [], [], x
        for k in range(self.n):
            v, c = self.f(k, v)
            s.append(v)
            idx.append(c)
        return s, idx

    def loss(self, kind, mode, i, x, eps, eta):
        s, idx = self.states(x)
        ins = [x, *s[:-1]]
        h = ins[i] + eps
        sq = lambda d: d.pow(2).flatten(1).sum(1)
        if kind == "drl":  # Meulemans et al.: the noisy output propagated down by eq. DTP-t (clean indices)
            v = h
            for k in range(i, self.n):
                v = self.f(k, v)[0]
            for k in range(self.n - 1, i, -1):
                v = s[k - 1] + self.g(k, v, idx[k]) - self.g(k, s[k], idx[k])
            return sq(h - (ins[i] + self.g(i, v, idx[i]) - self.g(i, s[i], idx[i]))).mean()
        s_eps, c_eps = self.f(i, h)
        c_rec = c_eps if mode == "noisy" else idx[i]
        if kind == "dtp":
            return sq(h - self.g(i, s_eps, c_rec)).mean()
        r = self.g(i, s[i], idx[i])
        dr = self.g(i, s_eps, c_rec) - r
        dr_y = self.g(i, s[i] + eta, idx[i]) - r  # the authors' y-noise term: clean indices
        return (-2.0 * (eps * dr).flatten(1).sum(1) + sq(dr_y)).mean()


def draws_for(net, x, i, sigma, seed=3):
    """Fixed noise: ε of the shape of s^{i} (the input of layer i+1) and η of the shape of its output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        outs = [x]
        for layer_i in range(len(net.layers)):
            d, _ = net.layers[layer_i].drive(outs[-1])
            outs.append(F.elu(d) if layer_i < net.n_states else d)
    eps = sigma * torch.randn(outs[i].shape, generator=g, dtype=torch.float64)
    eta = sigma * torch.randn(outs[i + 1].shape, generator=g, dtype=torch.float64)
    return eps, eta


def library_loss_and_grads(learner, net, x, i, eps, eta):
    queue = [eps] if learner.kind != "ldrl" else [eps, eta]

    def fixed_noise(like, sigma):  # the learner's draws, in its order: ε, then η (L-DRL)
        assert sigma == SIGMA
        e = queue.pop(0)
        assert e.shape == like.shape
        return e

    learner._noise = fixed_noise
    with torch.no_grad():
        outs, ctxs = learner.forward(net, x)
    G = learner.feedback[i]
    loss = learner.feedback_loss(net, i, [x, *outs[:-1]], outs, ctxs)
    assert not queue
    return loss, torch.autograd.grad(loss, [G.weight, G.bias])


def changed_fraction(ref, x, eps, i):
    """Fraction of the pooled units of layers i+1… whose arg-max the noise on s^i changes."""
    s, idx = ref.states(x)
    v, changed, total = [x, *s[:-1]][i] + eps, 0, 0
    for k in range(i, ref.n):
        v, c = ref.f(k, v)
        if c is not None:
            changed += int((c != idx[k]).sum())
            total += c.numel()
    return changed / total


@pytest.mark.parametrize("kind", ["ldrl", "drl", "dtp"])
@pytest.mark.parametrize("mode", ["noisy", "clean"])
@pytest.mark.parametrize("i", [1, 2, 3])
def test_feedback_loss_and_gradient_equal_the_hand_written_reference(kind, mode, i):
    """The learner's feedback loss of layer i+1 (conv 2, conv 3 with max-pool, the readout) and its gradient
    wrt (A, c) equal the hand-written reference on the same noise draws, to float64 round-off (1e-12
    relative), for each construction. The draws change the arg-max of a fair share of the pooled units
    (asserted), so routing any term through the other pass's indices fails: G(F(x+ε)) at the clean
    indices (or the reverse), the η term or r = G(F(x)) at the noisy ones, any of DRL's G at the noisy
    ones."""
    net, x = small_conv()
    learner = DTP(0.5, kind, fb_noise=(SIGMA,), fb_pool_indices=mode, seed=1)
    learner.setup(net)
    ref = Reference(net, learner, i)
    with torch.no_grad():
        outs, _ = learner.forward(net, x)
    s_ref, _ = ref.states(x)
    assert max(float((a - b).abs().max()) for a, b in zip(outs, s_ref)) < 1e-14  # the same F, by hand
    eps, eta = draws_for(net, x, i, SIGMA)
    if i < 3:  # layer 4 (the readout) has no pooling, above it nor in it
        assert changed_fraction(ref, x, eps, i) > 0.15
    got_loss, got = library_loss_and_grads(learner, net, x, i, eps, eta)
    want_loss = ref.loss(kind, mode, i, x, eps, eta)
    want = torch.autograd.grad(want_loss, list(ref.A[i]))
    got_loss, want_loss = float(got_loss.detach()), float(want_loss.detach())
    assert abs(got_loss - want_loss) < 1e-12 * abs(want_loss)
    scale = max(float(w.abs().max()) for w in want)
    assert max(float((a - b).abs().max()) for a, b in zip(got, want)) < 1e-12 * scale


@pytest.mark.parametrize("kind", ["ldrl", "dtp", "drl"])
def test_the_two_constructions_differ_exactly_when_an_arg_max_changes(kind):
    """L-DRL and DTP: at σ = 0.3 the noisy and clean constructions give losses and gradients that differ at
    O(1) (so the option is not a no-op); at σ = 1e-9 no arg-max changes and they agree to round-off.
    DRL: the option does not apply, the two are identical at any σ."""
    net, x = small_conv()
    for sigma, differ in ((SIGMA, True), (1e-9, False)):
        results = {}
        for mode in ("noisy", "clean"):
            learner = DTP(0.5, kind, fb_noise=(sigma,), fb_pool_indices=mode, seed=1)
            learner.setup(net)
            eps, eta = draws_for(net, x, 1, sigma)
            ref = Reference(net, learner, 1)
            moved = changed_fraction(ref, x, eps, 1)
            assert (moved > 0.15) if differ else (moved == 0.0)
            queue = [eps, eta] if kind == "ldrl" else [eps]
            learner._noise = lambda like, s: queue.pop(0)
            with torch.no_grad():
                outs, ctxs = learner.forward(net, x)
            loss = learner.feedback_loss(net, 1, [x, *outs[:-1]], outs, ctxs)
            results[mode] = (float(loss.detach()), torch.autograd.grad(loss, [learner.feedback[1].weight]))
        (ln, (gn,)), (lc, (gc,)) = results["noisy"], results["clean"]
        rel_g = float((gn - gc).norm() / gc.norm())
        if kind == "drl":
            assert rel_g == 0.0 and ln == lc
        elif differ:
            assert rel_g > 0.05 and abs(ln - lc) > 1e-3 * abs(lc)
        else:
            assert rel_g < 1e-9


def test_dense_nets_are_the_same_under_both_constructions():
    """No pooling, no indices: on an MLP the two constructions give the same feedback phase bit for bit."""
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(hidden=(8, 6), activation="elu", cost="ce_readout"), (1, 3, 4), 3, generator=g).double()
    x = torch.randn(10, 12, generator=g, dtype=torch.float64)
    weights = {}
    for mode in ("noisy", "clean"):
        learner = DTP(0.5, "ldrl", fb_iters=(3,), fb_lrs=(0.05,), fb_pool_indices=mode, seed=2)
        learner.train_feedback(net, x)
        weights[mode] = [p.detach().clone() for G in learner.feedback[1:] for p in G.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights["noisy"], weights["clean"]))


# ------------------------------------------------------------------------------------- the config key
def test_the_default_is_the_authors_construction_and_the_key_reaches_the_learner():
    assert LearnerConfig().fb_pool_indices == "noisy" and DTP(0.5).fb_pool_indices == "noisy"
    cfg = load_config(MODELS / "cifar10_dtp_vgg.toml")
    assert build_learner(cfg.learner).fb_pool_indices == "noisy"
    cfg = load_config(MODELS / "cifar10_dtp_vgg.toml", ["learner.fb_pool_indices=clean"])
    assert build_learner(cfg.learner).fb_pool_indices == "clean"
    with pytest.raises(ConfigError, match="learner.fb_pool_indices"):
        LearnerConfig(algorithm="ldrl", fb_pool_indices="argmax")
    with pytest.raises(ConfigError, match="learner.fb_pool_indices"):
        DTP(0.5, fb_pool_indices="Noisy")


@pytest.mark.parametrize(
    "card, overrides",
    [
        ("mnist_dtp_mlp", []),  # a dense net: no pooling
        ("cifar10_dtp_vgg", ["net.pools=['avg2','avg2','avg2','avg2','avg2']"]),  # conv without max-pool
        ("cifar10_dtp_vgg", ["learner.algorithm=bp"]),  # not a DTP learner
        ("cifar10_dtp_vgg", ["learner.algorithm=drl"]),  # DRL un-pools at the clean indices
    ],
)
def test_the_key_is_refused_where_nothing_uses_it(card, overrides):
    with pytest.raises(ConfigError, match=r"learner.fb_pool_indices = \"clean\" is not used.*dtp and ldrl on a net with a max-pooled"):
        load_config(MODELS / f"{card}.toml", overrides + ["learner.fb_pool_indices=clean"])
    load_config(MODELS / f"{card}.toml", overrides)  # the card itself stays valid


def test_the_key_is_accepted_on_a_conv_net_whose_pools_default_to_max2():
    cfg = load_config(MODELS / "cifar10_dtp_vgg.toml", ["net.pools=[]", "learner.algorithm=dtp", "learner.fb_pool_indices=clean"])
    assert cfg.learner.fb_pool_indices == "clean"


# ------------------------------------------------------------------------------ per-parameter angles
def _mlp(seed=0, hidden=(12, 10), activation="elu", n=24, shape=(1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    net = build_net(NetConfig(hidden=hidden, activation=activation, cost="ce_readout"), shape, 5, generator=g).double()
    x = torch.randn(n, math.prod(shape), generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 5, (n,), generator=g), 5).double()
    return net, x, y


def _angle(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))))


def test_per_parameter_angles_are_each_parameters_angle_to_an_independent_bp_gradient():
    """`angles_to_bp_per_param_deg[n] = [∠W_n, ∠b_n]` against a BP gradient written by hand (the plain
    functional MLP with mean softmax CE); the readout's are 0 (its update is β × its BP gradient); and
    the concatenated angle is tied to them by cos∠(a, b)‖a‖‖b‖ = Σ_p cos∠(a_p, b_p)‖a_p‖‖b_p‖."""
    net, x, y = _mlp()
    learner = DTP(0.5, "ldrl", fb_iters=(5,), fb_lrs=(0.05,), seed=4)
    learner.train_feedback(net, x)
    m = learner.epoch_metrics(net, x, y)
    per = m["angles_to_bp_per_param_deg"]
    assert len(per) == len(net.layers) and all(len(p) == 2 for p in per)
    params = [p.detach().clone().requires_grad_(True) for p in net.param_list()]
    h = x
    for k in range(len(net.layers)):
        h = h @ params[2 * k].t() + params[2 * k + 1]
        if k < len(net.layers) - 1:
            h = F.elu(h)
    bp = torch.autograd.grad(-(y * F.log_softmax(h, dim=1)).sum(1).mean(), params)
    with torch.enable_grad():
        outs, ctxs = learner.forward(net, x)
    dtp = [g / 0.5 for g in learner.update(net, outs, ctxs, y)]
    for k in range(len(net.layers)):
        assert per[k] == pytest.approx([_angle(dtp[2 * k], bp[2 * k]), _angle(dtp[2 * k + 1], bp[2 * k + 1])], abs=1e-6)
        a, b = dtp[2 * k : 2 * k + 2], bp[2 * k : 2 * k + 2]
        lhs = math.cos(math.radians(m["angles_to_bp_deg"][k])) * math.sqrt(sum(float(t.pow(2).sum()) for t in a)) * math.sqrt(
            sum(float(t.pow(2).sum()) for t in b))
        rhs = sum(math.cos(math.radians(per[k][j])) * float(a[j].norm()) * float(b[j].norm()) for j in range(2))
        assert lhs == pytest.approx(rhs, rel=1e-9)
    assert max(per[-1]) < 1e-4
    assert abs(per[0][0] - per[0][1]) > 0.1  # W and b are compared separately (not one concatenated angle)


def test_per_parameter_angles_vanish_for_the_exact_transpose_on_a_linear_conv_net():
    """Identity activation and every G the exact transpose: DTP's update is β × BP's, for W and b alike."""
    cfg = NetConfig(**{**CONV.__dict__, "activation": "identity"})
    g = torch.Generator().manual_seed(0)
    net = build_net(cfg, (1, 16, 16), 3, generator=g).double()
    x = torch.randn(6, 1, 16, 16, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 3, (6,), generator=g), 3).double()
    learner = DTP(0.1, "ldrl")
    learner.set_feedback_to_transpose(net)
    m = learner.epoch_metrics(net, x, y)
    assert max(a for p in m["angles_to_bp_per_param_deg"] for a in p) < 1e-3
    assert max(m["feedback_weight_angles_deg"]) < 1e-4


# ------------------------------------------------------------------------- feedback-weight angles
def test_feedback_weight_angles_transpose_random_and_prescribed():
    """∠(W_n, A_nᵀ) for dense layers and ∠(W_n, A_n) for conv layers, flattened (the authors' metrics.py):
    0° at the exact transpose, ≈ 90° for an independent random A on a 300 × 300 layer (spread ≈ 0.2°),
    180° for −Wᵀ, and exactly a prescribed θ when A = ‖W‖(cos θ Ŵ + sin θ Û), Û ⊥ Ŵ — on a non-square
    dense layer (a missing transpose gives another number) and on a conv kernel."""
    net, x, y = _mlp(hidden=(300, 300, 40), shape=(1, 10, 10), n=8)
    learner = DTP(0.5, "ldrl")
    learner.setup(net)
    random = learner.feedback_weight_angles_deg(net)
    assert len(random) == len(net.layers) - 1 and abs(random[0] - 90.0) < 1.5
    assert learner.epoch_metrics(net, x, y)["feedback_weight_angles_deg"] == random
    learner.set_feedback_to_transpose(net)
    assert max(learner.feedback_weight_angles_deg(net)) < 1e-4  # acos near 1: ~1e-5° of round-off

    def prescribe(G, W_oriented, theta, seed):
        g = torch.Generator().manual_seed(seed)
        w = W_oriented.detach().double()
        u = torch.randn(w.shape, generator=g, dtype=torch.float64)
        u = u - (u * w).sum() / (w * w).sum() * w
        a = math.cos(theta) * w + math.sin(theta) * u * (w.norm() / u.norm())
        with torch.no_grad():
            G.weight.copy_(a.t() if isinstance(G._layer[0], Dense) else a)  # A_n has the shape of W_nᵀ (dense)

    thetas = (math.radians(60.0), math.radians(25.0), math.pi)
    for k, theta in zip(range(1, 4), thetas):
        prescribe(learner.feedback[k], net.layers[k].weight, theta, k)  # layer 3: 300 → 40, not square
    assert learner.feedback_weight_angles_deg(net) == pytest.approx([60.0, 25.0, 180.0], abs=1e-6)

    conv, _ = small_conv()
    learner = DTP(0.5, "ldrl")
    learner.setup(conv)
    prescribe(learner.feedback[1], conv.layers[1].weight, math.radians(40.0), 7)
    assert learner.feedback_weight_angles_deg(conv)[0] == pytest.approx(40.0, abs=1e-6)


def test_training_logs_the_new_angles(tmp_path):
    """metrics.jsonl carries both new lists beside the concatenated and Jacobian angles."""
    import json

    train(load_config(MODELS / "mnist_dtp_mlp.toml", FAST), tmp_path, splits=fake_splits("mnist", 40, 20), progress=False, log=None)
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(line["angles_to_bp_per_param_deg"]) == 4 and all(len(p) == 2 for p in line["angles_to_bp_per_param_deg"])
    assert len(line["feedback_weight_angles_deg"]) == 3
    assert max(line["angles_to_bp_per_param_deg"][-1]) < 1e-2  # the readout: β × its BP gradient
    assert all(0.0 <= a <= 180.0 for a in line["feedback_weight_angles_deg"])


def test_a_non_finite_update_gives_a_nan_angle_not_zero():
    """A diverged feedback phase must not read as perfect alignment (the old clamp turned NaN into 0°)."""
    a = torch.tensor([1.0, float("nan")])
    assert math.isnan(_angle_deg(a, torch.tensor([1.0, 0.0])))
    assert _angle_deg(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(90.0)
