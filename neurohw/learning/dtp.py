"""Difference Target Propagation with learned feedback (docs/math.md §DTP): DTP, DRL and L-DRL.

The forward pass is the BP baseline's feedforward net, layer by layer, each layer's input detached so
that every update stays local:

    s^n = F_n(s^{n−1}),   F_n(v) = ρ_n(D_{n−1}(v))   (ρ_n = ρ, or the identity for a CE readout)   (eq. DTP-F)

(index n = 1…N counts the net's layers, `layers[n−1]`; s^0 = x; s^N is the net's output: the last
state for "mse", the readout's logits for "ce_readout"). Each layer n ≥ 2 owns a feedback map G_n
from s^n back to s^{n−1}, with the adjoint shape of the connection (a dense (in × out) matrix, or a
transposed convolution after un-pooling with max-pool indices passed explicitly):

    G_n(t; c) = A_n(ρ_n(U_n(t; c))) + c_n                                                      (eq. DTP-G)

(the authors' construction, Ernoult et al. 2022: the reverse of the block conv → ρ → pool; U_n puts t
back on the convolution's grid at the arg-max positions c of a forward pass of F_n). Targets, always at
the clean pass's indices c^n = c(s^{n−1}):

    t^N = s^N − β ∇_{s^N} Σ_batch ℓ,   t^{n−1} = s^{n−1} + G_n(t^n; c^n) − G_n(s^n; c^n)          (eq. DTP-t)

and the forward weights take one optimizer step on Σ_n ½‖s^n − t^n‖² (batch mean), whose gradient
is written into `.grad` (eq. DTP-θ; with G_n the exact transpose of a linear net it equals β times
the gradient of the mean loss). Before that step, per batch and layer n = 2…N in turn, G_n takes
`fb_iters[n−2]` SGD steps (momentum `fb_momentum`, learning rate `fb_lrs[n−2]`) on one of

* "ldrl" (Ernoult et al. 2022):   −2⟨ε, G(F(x+ε); c_ε) − G(F(x); c)⟩ + ‖G(F(x)+η; c) − G(F(x); c)‖²   (eq. L-DRL)
* "drl"  (Meulemans et al. 2020): ‖x+ε − (x + G_n(r^n; c^n) − G_n(s^n; c^n))‖², r^n the difference-
  corrected propagation (eq. DTP-t, at the clean indices) of F_N∘…∘F_n(x+ε) down to layer n      (eq. DRL)
* "dtp"  (Lee et al. 2015):       ‖x+ε − G(F(x+ε); c_ε)‖²                                         (eq. DTP-rec)

with x = s^{n−1}, ε, η ~ N(0, σ_n²), σ_n = `fb_noise[n−2]`, drawn from the learner's own seeded
generator (on the net's device) in that order (ε, then η); batch mean of the per-sample sums. G_1 is
never needed nor trained.

Max-pool indices of the L-DRL and DTP losses (`fb_pool_indices`, eq. DTP-pool): c = the clean pass's
indices (of F_n(x), the ones the targets use), c_ε = those of the noisy pass F_n(x+ε), whose output
G(F(x+ε)) reconstructs.

* "noisy" (the default; the authors' construction): as written above. Their `target_prop/
  feedback_loss.py` (L-DRL) computes r = G(y) before the noisy forward pass, G(F(x+ε)) right after it
  (at the noisy indices, handed over by the forward layer's shared "magic bridge"), then re-runs the
  clean forward pass "since we can't pass the maxpool indices manually" before G(y+dy): the clean
  indices serve only G(F(x)) and the η term; their legacy `layer_convpool.weight_b_train` does the same
  with explicit indices. Their vanilla DTP (`vanilla_DTP_feedback_loss`) reconstructs G(F(x+ε)) right
  after the noisy forward pass, hence at c_ε.
* "clean": G(F(x+ε)) un-pools at c (c_ε → c above): the construction this library used before; kept
  for comparison (docs/results.md §7).

The two coincide for dense layers and for conv layers without a max-pool. DRL is not affected: its
reconstruction is the target propagation (eq. DTP-t) of the noisy output, which un-pools at the clean
indices as the targets do (Meulemans et al.'s `propagate_backward`, the operator their loss trains; the
authors' DRL baseline is Meulemans et al.'s direct-feedback conv net, which does not un-pool at all);
G_n never receives the noisy pass's own output F_n(x+ε) except at the output layer, which is dense here.

Diagnostics (`epoch_metrics`, eq. DTP-angles): `angles_to_bp_deg` (per layer, (W_n, b_n) concatenated),
`angles_to_bp_per_param_deg` (per layer, [angle of W_n, angle of b_n]: the authors' per-parameter
comparison, `target_prop/callbacks.py`), `jacobian_angles_deg` (per feedback map, Jacobian probes) and
`feedback_weight_angles_deg` (per feedback map, the angle between A_n and the forward weight W_n as the
authors' `compute_dist_angle` takes it: W_nᵀ for a dense layer, the kernel itself for a conv layer).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from neurohw.choices import FB_POOL_INDICES as POOL_INDICES  # learner.fb_pool_indices
from neurohw.core.activations import Activation
from neurohw.errors import ConfigError
from neurohw.learning.base import Apply, batch_stats, set_grads
from neurohw.nets.layered import LayeredNet
from neurohw.nets.layers import Conv2d, Dense

FEEDBACK_LOSSES = ("ldrl", "drl", "dtp")
DIAGNOSTIC_PROBES = 4  # random probes per sample of the Jacobian-angle estimate


class Feedback(nn.Module):
    """G_n (eq. DTP-G): the adjoint-shaped map from a layer's output space back to its input space.

    Its parameters live on `device` with `dtype`; `forward(t, ctx)` takes the max-pool indices `ctx`
    of a forward pass of F_n explicitly (the clean pass's for targets; eq. DTP-pool for the losses).
    """

    def __init__(self, layer: Dense | Conv2d, activation: Activation | None, generator: torch.Generator, device, dtype):
        super().__init__()
        self._layer = (layer,)  # a tuple: the forward layer is not a submodule (its parameters are not ours)
        self.activation = activation
        if isinstance(layer, Dense):
            shape, fan_in, n_bias = (layer.in_features, layer.out_shape[0]), layer.out_shape[0], layer.in_features
        elif isinstance(layer, Conv2d):
            shape = tuple(layer.weight.shape)  # conv_transpose2d's layout (out_ch of F, in_ch of F, k, k)
            fan_in, n_bias = layer.conv_shape[0] * layer.kernel_size**2, layer.in_shape[0]
        else:
            raise ConfigError(f"DTP has no feedback layer for a connection of type {type(layer).__name__}")
        bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default init of the inverse layer
        draw = lambda *s: torch.empty(s, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
        self.weight = nn.Parameter(draw(*shape).to(device=device, dtype=dtype))
        self.bias = nn.Parameter(draw(n_bias).to(device=device, dtype=dtype))

    def forward(self, t: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        layer = self._layer[0]
        u = t if isinstance(layer, Dense) else layer.unpool(t, ctx)
        if self.activation is not None:
            u = self.activation(u)
        if isinstance(layer, Dense):
            return torch.addmm(self.bias, u, self.weight.t()).view(-1, *layer.in_shape)
        return F.conv_transpose2d(u, self.weight, self.bias, layer.stride, layer.padding, layer._output_padding)

    @torch.no_grad()
    def set_transpose(self) -> None:
        """A_n = the exact transpose of the forward connection (c_n = 0); for checks and tests."""
        layer = self._layer[0]
        self.weight.copy_(layer.weight.t() if isinstance(layer, Dense) else layer.weight)
        self.bias.zero_()


def _per_layer(key: str, values: Sequence, n: int) -> list:
    values = list(values)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ConfigError(
            f"{key} has {len(values)} values but the net has {n} trained feedback layers (layers 2…{n + 1}); give 1 or {n}"
        )
    return values


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    cos = float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos)))) if math.isfinite(cos) else math.nan  # NaN stays NaN, not 0°


def _jvp(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J_f(x)·v by the double-backward trick (forward-mode AD would import deprecated TorchScript)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = f(x)
        u = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, x, u, create_graph=True)
        (out,) = torch.autograd.grad(g, u, v)
    return out


class DTP:
    """DTP with learned feedback weights; `feedback` ∈ {"ldrl", "drl", "dtp"} selects the feedback loss
    and `fb_pool_indices` ∈ {"noisy", "clean"} the max-pool indices of G(F(x+ε)) in the L-DRL and DTP
    losses (eq. DTP-pool; DRL always un-pools at the clean indices).

    Implements the Learner interface: `step` trains the feedback maps, then fills `.grad` of
    `net.param_list()` with the gradient of Σ_n ½‖s^n − t^n‖² and calls `apply()` once; `predict` is
    the feedforward pass. The feedback maps, their optimizers and the noise generator are created on
    the first call with a net (on its device and dtype) and are part of `state_dict()`.
    """

    def __init__(
        self,
        beta: float,
        feedback: str = "ldrl",
        *,
        fb_iters: Sequence[int] = (20,),
        fb_noise: Sequence[float] = (0.1,),
        fb_lrs: Sequence[float] = (1e-3,),
        fb_momentum: float = 0.9,
        fb_pool_indices: str = "noisy",
        seed: int = 0,
    ):
        if feedback not in FEEDBACK_LOSSES:
            raise ConfigError(f"DTP feedback loss '{feedback}' is not valid; valid: {', '.join(FEEDBACK_LOSSES)}")
        if not beta > 0 or not math.isfinite(beta):
            raise ConfigError(f"learner.beta must be > 0, got {beta}")
        for key, values in (("learner.fb_iters", fb_iters), ("learner.fb_noise", fb_noise), ("learner.fb_lrs", fb_lrs)):
            if len(values) == 0:
                raise ConfigError(f"{key} needs at least one value")
        if any(int(k) < 0 for k in fb_iters):
            raise ConfigError(f"learner.fb_iters must be ≥ 0, got {list(fb_iters)}")
        if any(not s > 0 for s in fb_noise):
            raise ConfigError(f"learner.fb_noise must be > 0, got {list(fb_noise)}")
        if any(not lr >= 0 for lr in fb_lrs):
            raise ConfigError(f"learner.fb_lrs must be ≥ 0, got {list(fb_lrs)}")
        if not 0.0 <= fb_momentum < 1.0:
            raise ConfigError(f"learner.fb_momentum must be in [0, 1), got {fb_momentum}")
        if fb_pool_indices not in POOL_INDICES:
            raise ConfigError(f"learner.fb_pool_indices = '{fb_pool_indices}' is not valid; valid: {', '.join(POOL_INDICES)}")
        self.name = feedback
        self.beta, self.kind = float(beta), feedback
        self.fb_iters, self.fb_noise, self.fb_lrs = [int(k) for k in fb_iters], [float(s) for s in fb_noise], [float(lr) for lr in fb_lrs]
        self.fb_momentum, self.seed = float(fb_momentum), int(seed)
        self.fb_pool_indices = fb_pool_indices  # eq. DTP-pool: "noisy" (the authors') or "clean"
        self.feedback: list[Feedback | None] | None = None  # aligned with net.layers; [0] is None
        self.optimizers: list[torch.optim.Optimizer | None] = []
        self.generator: torch.Generator | None = None
        self._pending: dict | None = None
        self._net_id: int | None = None

    # ------------------------------------------------------------------------------------ set-up
    def setup(self, net: LayeredNet) -> None:
        """Create G_2…G_N, their optimizers and the noise generator for `net` (once; then a no-op)."""
        if self.feedback is not None:
            if self._net_id != id(net):
                raise ConfigError("this DTP learner was set up for another net; build one learner per net")
            return
        n = len(net.layers) - 1
        if n < 1:
            raise ConfigError("DTP needs a net of at least two layers (one hidden layer)")
        iters = _per_layer("learner.fb_iters", self.fb_iters, n)
        noise = _per_layer("learner.fb_noise", self.fb_noise, n)
        lrs = _per_layer("learner.fb_lrs", self.fb_lrs, n)
        p = net.layers[0].weight
        init_gen = torch.Generator().manual_seed(self.seed)
        self.feedback = [None] + [
            Feedback(net.layers[i], self._activation(net, i), init_gen, p.device, p.dtype) for i in range(1, len(net.layers))
        ]
        self.optimizers = [None] + [
            torch.optim.SGD(g.parameters(), lr=lr, momentum=self.fb_momentum) for g, lr in zip(self.feedback[1:], lrs)
        ]
        self._iters, self._sigma = [0] + iters, [0.0] + noise
        self.generator = torch.Generator(device=p.device).manual_seed(self.seed + 1)
        self._net_id = id(net)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._load(state)

    @staticmethod
    def _activation(net: LayeredNet, i: int) -> Activation | None:
        """ρ_n of layer i (0-based): the net's ρ, or None for the CE readout (a plain affine map)."""
        return net.activation if i < net.n_states else None

    def set_feedback_to_transpose(self, net: LayeredNet) -> None:
        """Every G_n = the exact transpose of its connection (checks; not used in training)."""
        self.setup(net)
        for g in self.feedback[1:]:
            g.set_transpose()

    # ----------------------------------------------------------------------------- forward pass
    def layer_forward(self, net: LayeredNet, i: int, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """F_n(v) of layer i (0-based) and its max-pool indices (eq. DTP-F)."""
        d, ctx = net.layers[i].drive(v)
        act = self._activation(net, i)
        return (act(d) if act is not None else d), ctx

    def forward(self, net: LayeredNet, x: torch.Tensor) -> tuple[list[torch.Tensor], list]:
        """Outputs s^1…s^N of every layer (each layer's input detached) and their max-pool indices."""
        outs, ctxs, v = [], [], x
        for i in range(len(net.layers)):
            v, ctx = self.layer_forward(net, i, v.detach())
            outs.append(v)
            ctxs.append(ctx)
        return outs, ctxs

    @staticmethod
    def output_loss(net: LayeredNet, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σ_batch ℓ at the net's output s^N (eq. ℓ): ½‖s^N − y‖² ("mse") or CE of the logits s^N."""
        if net.cost == "mse":
            return 0.5 * (out - y).pow(2).sum()
        return -(y * F.log_softmax(out, dim=1)).sum()

    @torch.no_grad()
    def targets(self, net: LayeredNet, outs: list[torch.Tensor], ctxs: list, y: torch.Tensor) -> list[torch.Tensor]:
        """t^1…t^N (eq. DTP-t) from the detached outputs of a forward pass."""
        with torch.enable_grad():
            o = outs[-1].detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.output_loss(net, o, y), o)
        t = [None] * len(outs)
        t[-1] = outs[-1] - self.beta * g
        for i in range(len(outs) - 1, 0, -1):
            G = self.feedback[i]
            t[i - 1] = outs[i - 1] + G(t[i], ctxs[i]) - G(outs[i], ctxs[i])
        return t

    def update(self, net: LayeredNet, outs: list[torch.Tensor], ctxs: list, y: torch.Tensor) -> list[torch.Tensor]:
        """∂/∂θ of Σ_n ½‖s^n − t^n‖² (batch mean), ordered as `net.param_list()` (eq. DTP-θ).

        `outs` must come from `forward` with grad enabled (each layer's graph reaches its own θ only).
        """
        t = self.targets(net, [o.detach() for o in outs], ctxs, y)
        with torch.enable_grad():
            loss = sum(0.5 * (o - tt).pow(2).flatten(1).sum(1).mean() for o, tt in zip(outs, t))
            return list(torch.autograd.grad(loss, net.param_list()))

    # ---------------------------------------------------------------------------- feedback phase
    def _noise(self, like: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype).mul_(sigma)

    def feedback_loss(self, net: LayeredNet, i: int, ins: list, outs: list, ctxs: list) -> torch.Tensor:
        """The feedback loss of G of layer i (0-based, i ≥ 1) on one noise draw (eq. L-DRL, DRL, DTP-rec);
        G(F(x+ε)) un-pools at the noisy pass's indices or at the clean ones (eq. DTP-pool)."""
        G, sigma = self.feedback[i], self._sigma[i]
        x, s, c = ins[i], outs[i], ctxs[i]
        noisy = self.fb_pool_indices == "noisy"  # eq. DTP-pool (L-DRL and DTP; DRL un-pools at c)
        eps = self._noise(x, sigma)
        if self.kind == "ldrl":
            eta = self._noise(s, sigma)
            with torch.no_grad():
                s_eps, c_eps = self.layer_forward(net, i, x + eps)
            r = G(s, c)
            first = (eps * (G(s_eps, c_eps if noisy else c) - r)).flatten(1).sum(1)
            second = (G(s + eta, c) - r).pow(2).flatten(1).sum(1)  # η is added to the clean output: clean indices
            return (second - 2.0 * first).mean()
        h = x + eps
        if self.kind == "dtp":
            with torch.no_grad():
                s_eps, c_eps = self.layer_forward(net, i, h)
            return (h - G(s_eps, c_eps if noisy else c)).pow(2).flatten(1).sum(1).mean()
        # drl: up to the output from the corrupted input, then back down to layer i by eq. DTP-t, the
        # operator DRL trains, at the clean indices as for the targets (fb_pool_indices does not apply:
        # G is applied to propagated targets, never to the noisy pass's own output F_n(x+ε) with n < N,
        # and this library's output layer N has no pooling)
        with torch.no_grad():
            v = h
            for k in range(i, len(net.layers)):
                v = self.layer_forward(net, k, v)[0]
            for k in range(len(net.layers) - 1, i, -1):
                Gk = self.feedback[k]
                v = outs[k - 1] + Gk(v, ctxs[k]) - Gk(outs[k], ctxs[k])
        rec = x + G(v, c) - G(s, c)
        return (h - rec).pow(2).flatten(1).sum(1).mean()

    def train_feedback_on(self, net: LayeredNet, ins: list, outs: list, ctxs: list) -> list[float]:
        """The feedback phase on detached activations: layers 2…N in turn; returns each layer's last loss."""
        last = []
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        for i in range(1, len(net.layers)):
            G, opt = self.feedback[i], self.optimizers[i]
            params = list(G.parameters())
            loss_value = float("nan")
            for _ in range(self._iters[i]):
                with torch.enable_grad():
                    loss = self.feedback_loss(net, i, ins, outs, ctxs)
                    grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads):
                    if world > 1:  # the feedback maps of every process stay identical
                        dist.all_reduce(g)
                        g.div_(world)
                    p.grad = g
                opt.step()
                loss_value = loss.detach()
            last.append(float(loss_value))
        return last

    def train_feedback(self, net: LayeredNet, x: torch.Tensor) -> list[float]:
        """The feedback phase alone on a batch (the forward weights do not change)."""
        net.check_batch(x)
        self.setup(net)
        with torch.no_grad():
            outs, ctxs = self.forward(net, x)
        return self.train_feedback_on(net, [x, *outs[:-1]], outs, ctxs)

    # ------------------------------------------------------------------------------ the Learner
    def step(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, apply: Apply) -> dict[str, torch.Tensor]:
        net.check_batch(x, y)
        self.setup(net)
        with torch.enable_grad():
            outs, ctxs = self.forward(net, x)
        detached = [o.detach() for o in outs]
        self.train_feedback_on(net, [x, *detached[:-1]], detached, ctxs)
        params = net.param_list()
        set_grads(params, self.update(net, outs, ctxs, y))
        apply()
        return batch_stats(net, detached[: net.n_states], y)

    @torch.no_grad()
    def predict(self, net: LayeredNet, x: torch.Tensor) -> torch.Tensor:
        return net.output(net.feedforward(x))

    # --------------------------------------------------------------------------- diagnostics
    def epoch_metrics(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, list]:
        """The angles of eq. DTP-angles on (x, y), in degrees:

        * `angles_to_bp_deg` (layers 1…N): the DTP update / β against the BP gradient of the mean loss,
          each layer's (W_n, b_n) flattened and concatenated;
        * `angles_to_bp_per_param_deg` (layers 1…N): [angle of W_n, angle of b_n], each parameter
          compared separately, as the authors' `CompareToBackpropCallback` does (there at β = 0.005;
          here at the learner's β, the update that is applied);
        * `jacobian_angles_deg` (layers 2…N): G_n's Jacobian against F_n's transposed Jacobian (probes);
        * `feedback_weight_angles_deg` (layers 2…N): A_n against the forward weight, as the authors'
          `compute_dist_angle` (`target_prop/metrics.py`): ∠(W_n, A_nᵀ) for a dense layer, ∠(W_n, A_n)
          for a conv layer (the transposed convolution's kernel has W_n's layout), flattened.

        Changes nothing and draws no number from the training generator."""
        net.check_batch(x, y)
        self.setup(net)
        params = net.param_list()
        with torch.enable_grad():
            bp = torch.autograd.grad(net.loss(net.feedforward(x), y).mean(), params)
            outs, ctxs = self.forward(net, x)
        dtp = [g / self.beta for g in self.update(net, outs, ctxs, y)]
        n = len(net.layers)
        angles = [_angle_deg(torch.cat([dtp[2 * i].flatten(), dtp[2 * i + 1]]), torch.cat([bp[2 * i].flatten(), bp[2 * i + 1]])) for i in range(n)]
        per_param = [[_angle_deg(dtp[2 * i], bp[2 * i]), _angle_deg(dtp[2 * i + 1], bp[2 * i + 1])] for i in range(n)]
        outs = [o.detach() for o in outs]
        return {
            "angles_to_bp_deg": angles,
            "angles_to_bp_per_param_deg": per_param,
            "jacobian_angles_deg": self.jacobian_angles_deg(net, [x, *outs[:-1]], outs, ctxs),
            "feedback_weight_angles_deg": self.feedback_weight_angles_deg(net),
        }

    def feedback_weight_angles_deg(self, net: LayeredNet) -> list[float]:
        """∠(W_n, A_nᵀ) (dense) or ∠(W_n, A_n) (conv), flattened, for n = 2…N (eq. DTP-angles)."""
        self.setup(net)
        out = []
        for i in range(1, len(net.layers)):
            W, A = net.layers[i].weight, self.feedback[i].weight
            out.append(_angle_deg(W, A.t() if isinstance(net.layers[i], Dense) else A))
        return out

    def jacobian_angles_deg(self, net: LayeredNet, ins: list, outs: list, ctxs: list) -> list[float]:
        """arccos(⟨J_G, J_Fᵀ⟩ / ‖J_G‖‖J_F‖) per feedback map, Frobenius products summed over the batch
        and estimated with Gaussian probes from a generator re-seeded at every call:
        ⟨J_G, J_Fᵀ⟩ = E⟨J_Gᵀ ε, J_F ε⟩, ‖J_F‖² = E‖J_F ε‖², ‖J_G‖² = E‖J_Gᵀ ε‖²."""
        gen = torch.Generator(device=ins[0].device).manual_seed(self.seed + 2)
        out = []
        for i in range(1, len(net.layers)):
            G, x, s, c = self.feedback[i], ins[i], outs[i], ctxs[i]
            dot = sq_f = sq_g = 0.0
            for _ in range(DIAGNOSTIC_PROBES):
                eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                jf = _jvp(lambda v: self.layer_forward(net, i, v)[0], x, eps)
                with torch.enable_grad():
                    t = s.detach().requires_grad_(True)
                    (jg_t,) = torch.autograd.grad(G(t, c), t, eps)
                dot += float((jg_t * jf).sum())
                sq_f += float(jf.pow(2).sum())
                sq_g += float(jg_t.pow(2).sum())
            cos = dot / max(math.sqrt(sq_f * sq_g), 1e-300)
            out.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))) if math.isfinite(cos) else math.nan)
        return out

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        if self.feedback is None:
            return dict(self._pending) if self._pending is not None else {"initialised": False}
        return {
            "initialised": True,
            "generator": self.generator.get_state(),
            "feedback": [g.state_dict() for g in self.feedback[1:]],
            "optimizers": [o.state_dict() for o in self.optimizers[1:]],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the feedback maps, their optimizers and the noise generator (now, or at set-up)."""
        if not state.get("initialised", False):
            return
        if self.feedback is None:
            self._pending = state
        else:
            self._load(state)

    def _load(self, state: dict) -> None:
        if len(state["feedback"]) != len(self.feedback) - 1:
            raise ConfigError(
                f"the DTP state holds {len(state['feedback'])} feedback layers but the net has {len(self.feedback) - 1}"
            )
        for g, sd in zip(self.feedback[1:], state["feedback"]):
            g.load_state_dict(sd)
        for o, sd in zip(self.optimizers[1:], state["optimizers"]):
            o.load_state_dict(sd)
        self.generator.set_state(state["generator"].cpu())
