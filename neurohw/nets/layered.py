"""The layered energy network: its primitive function Φ, closed-form dynamics and cost.

Equations (written once in docs/math.md):

* Φ(x, s, θ) = Σ_n ⟨s_{n+1}, D_n(s_n)⟩, s_0 = x                                  (eq. Φ)
* Φ^β = Φ − β·ℓ, with ℓ = ½‖s_N − y‖² ("mse", the output s_N is a state of the dynamics) or
  ℓ = CE(softmax(W_out s_{N−1} + b_out), y) ("ce_readout", the output is read out, not a state)  (eq. ℓ)
* s_{t+1} = ρ(∂Φ^β/∂s(x, s_t, θ)), all layers synchronously                       (eq. dyn)
  (optionally, `nudge="outside"`: s_{N,t+1} = ρ(∂Φ/∂s_N) − β·∂ℓ/∂s_N, as in the code of Ernoult et
  al. 2019/2020; eq. dyn-out)

`step` computes ∂Φ^β/∂s in closed form (`Dense`/`Conv2d` drives and feedbacks); `phi` evaluates Φ^β
for the autograd reference used in tests and benchmarks. Index convention: `state[i]` is s_{i+1};
`layers[i]` links s_i to s_{i+1}; with the "ce_readout" cost the last layer is the readout.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neurohw.core.activations import get_activation
from neurohw.errors import ConfigError
from neurohw.nets.layers import Conv2d, Dense

COSTS = ("mse", "ce_readout")
NUDGES = ("inside", "outside")

State = list[torch.Tensor]


class LayeredNet(nn.Module):
    """A convergent layered RNN with static input, defined by its primitive function Φ.

    With symmetric connections (the default) the dynamics derive from Φ (EP, C-EP, BPTT). Built
    from dense connections with `backward=True`, the feedback weights are untied and the dynamics
    are a vector field without Φ (C-VF); `phi` and `phi_param_grads` then refuse to run.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        layers: Sequence[Dense | Conv2d],
        activation: str,
        cost: str,
        nudge: str = "inside",
    ):
        super().__init__()
        if cost not in COSTS:
            raise ConfigError(f"unknown net.cost '{cost}'; valid: {', '.join(COSTS)}")
        if nudge not in NUDGES:
            raise ConfigError(f"unknown net.nudge '{nudge}'; valid: {', '.join(NUDGES)}")
        self.nudge = nudge
        self.input_shape = tuple(int(d) for d in input_shape)
        self.layers = nn.ModuleList(layers)
        self._layers = tuple(layers)  # plain tuple: indexing an nn.ModuleList is slow in the hot loop
        self.activation = get_activation(activation)
        self.cost = cost
        n_dynamic = len(layers) - (1 if cost == "ce_readout" else 0)
        if n_dynamic < 1:
            raise ConfigError(f"net needs at least one layer in the dynamics besides the readout, got {len(layers)} layers")
        self.n_states = n_dynamic
        shape = self.input_shape
        for i, layer in enumerate(layers):
            if tuple(layer.in_shape) != tuple(shape):
                raise ConfigError(f"layer {i} expects input shape {layer.in_shape} but receives {shape}")
            shape = layer.out_shape
        if cost == "ce_readout" and not isinstance(layers[-1], Dense):
            raise ConfigError("the ce_readout cost needs a dense readout layer last")
        self.symmetric = all(getattr(l, "weight_backward", None) is None for l in layers)
        self.all_dense = all(isinstance(l, Dense) for l in layers)
        if not self.symmetric and cost != "mse":
            raise ConfigError("untied feedback weights (C-VF) are implemented for net.cost = 'mse' only")

    # ----------------------------------------------------------------------------------- shapes
    @property
    def state_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(l.out_shape) for l in self._layers[: self.n_states]]

    @property
    def readout(self) -> Dense | None:
        return self._layers[-1] if self.cost == "ce_readout" else None

    @property
    def n_outputs(self) -> int:
        return self._layers[-1].out_shape[0]

    def check_batch(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Raise ConfigError unless x is (B, *input_shape) and y (if given) is (B, n_outputs)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"input batch of shape {tuple(x.shape)} but the net expects (batch, {', '.join(map(str, self.input_shape))})"
            )
        if y is not None and tuple(y.shape) != (x.shape[0], self.n_outputs):
            raise ConfigError(
                f"target batch of shape {tuple(y.shape)} but the net expects ({x.shape[0]}, {self.n_outputs}) (one-hot)"
            )

    def init_state(self, x: torch.Tensor) -> State:
        """The zero state s_0 = 0 for a batch `x` (device and dtype follow `x`)."""
        b = x.shape[0]
        return [x.new_zeros((b, *shape)) for shape in self.state_shapes]

    def param_list(self) -> list[nn.Parameter]:
        """The parameters in the order of `phi_param_grads`: per layer weight, bias[, weight_backward]."""
        out = []
        for layer in self.layers:
            out += [layer.weight, layer.bias]
            if getattr(layer, "weight_backward", None) is not None:
                out.append(layer.weight_backward)
        return out

    # ------------------------------------------------------------------------------------- cost
    def output(self, state: State) -> torch.Tensor:
        """The network's output scores: s_N ("mse") or the readout's logits ("ce_readout")."""
        if self.cost == "mse":
            return state[-1]
        return self._layers[-1].drive(state[-1])[0]

    def loss(self, state: State, y: torch.Tensor) -> torch.Tensor:
        """ℓ(s, y) per sample (eq. ℓ); `y` is one-hot (or any target distribution for CE)."""
        if self.cost == "mse":
            return 0.5 * (state[-1] - y).pow(2).sum(1)
        logits = self.output(state)
        return -(y * F.log_softmax(logits, dim=1)).sum(1)

    def cost_grad(self, s_last: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∂ℓ/∂s for the last state of the dynamics (eq. ℓ), in closed form."""
        if self.cost == "mse":
            return s_last - y
        readout = self._layers[-1]
        p = torch.softmax(readout.drive(s_last)[0], dim=1)
        return readout.feedback(p - y, None)

    # --------------------------------------------------------------------------------- dynamics
    def input_drive(self, x: torch.Tensor) -> torch.Tensor:
        """D_0(x), the drive of the clamped input on s_1, computed once per batch."""
        return self._layers[0].drive(x)[0]

    def step(
        self,
        x_drive: torch.Tensor,
        state: State,
        y: torch.Tensor | None = None,
        beta: float = 0.0,
    ) -> State:
        """One synchronous step s_{t+1} = ρ(∂Φ^β/∂s(x, s_t, θ)) in closed form (eq. dyn, dyn-out).

        Under `torch.no_grad()` the activation is applied in place on fresh buffers; with grad
        enabled (BPTT) every op is out of place and differentiable.
        """
        inplace = not torch.is_grad_enabled()
        pre, g = self._pre_activations(x_drive, state, y, beta, inplace)
        new = [self.activation.inplace(a) if inplace else self.activation(a) for a in pre]
        if g is not None:
            new[-1] = new[-1].add_(g, alpha=-beta) if inplace else new[-1].add(g, alpha=-beta)
        return new

    def pre_activations(
        self, x_drive: torch.Tensor, state: State, y: torch.Tensor | None = None, beta: float = 0.0
    ) -> State:
        """The arguments a_n of ρ in `step` (with the nudge −β ∂ℓ/∂s_N when `nudge = "inside"`)."""
        return self._pre_activations(x_drive, state, y, beta, not torch.is_grad_enabled())[0]

    def _pre_activations(
        self, x_drive: torch.Tensor, state: State, y: torch.Tensor | None, beta: float, inplace: bool
    ) -> tuple[State, torch.Tensor | None]:
        """(a_n per state, ∂ℓ/∂s_N when it is added outside ρ, else None); fresh tensors."""
        layers, n = self._layers, len(state)
        fwd, ctx = [x_drive], [None]
        for i in range(1, n):
            d, c = layers[i].drive(state[i - 1])
            fwd.append(d)
            ctx.append(c)
        pre, outside = [], None
        for i in range(n):
            if i + 1 < n:
                a = layers[i + 1].feedback_add(fwd[i], state[i + 1], ctx[i + 1])
            elif i == 0:
                a = x_drive.clone()
            else:
                a = fwd[i]
            if i == n - 1 and beta != 0.0:
                g = self.cost_grad(state[i], y)
                if self.nudge == "inside":
                    a = a.add_(g, alpha=-beta) if inplace else a.add(g, alpha=-beta)
                else:
                    outside = g
            pre.append(a)
        return pre, outside

    def make_stepper(
        self, x_drive: torch.Tensor, y: torch.Tensor | None = None, beta: float = 0.0
    ) -> Callable[[State], State]:
        """`state -> step(x_drive, state, y, beta)` for a phase at fixed θ.

        For all-dense nets without autograd this is the engine's fast path (eq. fold): the
        activation is written ρ(a) = g(κ·a + c), κ and c are folded into the matrix products and
        into constant terms computed once per phase (κ·D_0(x) + c, κ·b_n + c, and κβy for the MSE
        nudge inside ρ), so a step is one `addmm` per connection direction, the nudge, and g in
        place per layer. Other nets (conv layers, or grad enabled) use `step`.
        """
        if torch.is_grad_enabled() or not self.all_dense:
            return lambda state: self.step(x_drive, state, y, beta)
        plan = _DensePlan(self, x_drive)
        n, k, g = self.n_states, plan.k, plan.g
        inside = self.nudge == "inside"
        nudge_mse = beta != 0.0 and self.cost == "mse"
        const = list(plan.const)
        if nudge_mse and inside:
            const[-1] = const[-1] + (k * beta) * y
        beta_y = beta * y if nudge_mse and not inside else None
        readout = self._layers[-1] if (beta != 0.0 and self.cost == "ce_readout") else None

        def advance(s: State) -> State:
            new = []
            for i in range(n):
                u = plan.pre_activation(i, s, const[i])
                if i == n - 1 and inside:
                    if nudge_mse:
                        u.add_(s[i], alpha=-k * beta)
                    elif readout is not None:
                        p = torch.softmax(torch.addmm(readout.bias, s[i], readout.weight.t()), dim=1).sub_(y)
                        u.addmm_(p, readout.weight, alpha=-k * beta)
                r = g(u)
                if i == n - 1 and not inside:
                    if nudge_mse:
                        r.add_(s[i], alpha=-beta).add_(beta_y)
                    elif readout is not None:
                        p = torch.softmax(torch.addmm(readout.bias, s[i], readout.weight.t()), dim=1).sub_(y)
                        r.addmm_(p, readout.weight, alpha=-beta)
                new.append(r)
            return new

        return advance

    def relax_free_checkerboard(self, x_drive: torch.Tensor, state: State, steps: int) -> State:
        """`steps` free steps (β = 0) of an all-dense net, computed as two interleaved chains.

        Without nudging the synchronous dynamics is bipartite: layer i at step t depends only on
        layers i ± 1 at step t − 1, so the (layer, step) pairs with i + t even and those with i + t odd
        form two independent chains (docs/math.md eq. chains). Running chain B one step ahead of
        chain A, both update the same layers at every step; stacking the two chains along the batch
        axis makes a step one `addmm` per connection direction of half the layers on 2B rows,
        instead of all layers on B rows: half the tensor operations for the same arithmetic. The
        result equals `steps` calls of the stepper (tested); layers with i ≡ steps (mod 2) come
        from chain A, the others from chain B.
        """
        if torch.is_grad_enabled() or not self.all_dense:
            raise ValueError("relax_free_checkerboard needs an all-dense net and no autograd")
        plan = _DensePlan(self, x_drive)
        n, b, g = self.n_states, x_drive.shape[0], plan.g
        const_b = plan.const
        const_2b = [torch.cat([plan.const[0], plan.const[0]])] + list(plan.const[1:])
        z = [torch.cat([t, t]) for t in state]  # rows [:b] chain A, [b:] chain B
        # prelude: chain B's even layers at step 1, from its odd layers at step 0
        half = [t[b:] for t in z]
        for i in range(0, n, 2):
            z[i] = torch.cat([z[i][:b], g(plan.pre_activation(i, half, const_b[i]))])
        for t in range(1, steps + 1):
            for i in range(t % 2, n, 2):  # chain A at step t, chain B at step t + 1
                z[i] = g(plan.pre_activation(i, z, const_2b[i]))
        return [z[i][:b] if i % 2 == steps % 2 else z[i][b:] for i in range(n)]

    def feedforward(self, x: torch.Tensor) -> State:
        """The equivalent feedforward pass s_{n+1} = ρ(D_n(s_n)) (the backprop baseline's net)."""
        s, out = x, []
        for layer in self._layers[: self.n_states]:
            s = self.activation(layer.drive(s)[0])
            out.append(s)
        return out

    # ------------------------------------------------------------------------- Φ and ∂Φ/∂θ
    def _require_phi(self) -> None:
        if not self.symmetric:
            raise ConfigError("a net with untied feedback weights (C-VF) has no primitive function Φ")

    def phi(self, x: torch.Tensor, state: State, y: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
        """Φ^β(x, s, θ) summed over the batch (eq. Φ); a differentiable reference for autograd."""
        self._require_phi()
        s = [x, *state]
        total = sum((s[i + 1] * self._layers[i].drive(s[i])[0]).sum() for i in range(self.n_states))
        if beta != 0.0:
            total = total - beta * self.loss(state, y).sum()
        return total

    def phi_param_grads(
        self, x: torch.Tensor, state: State, y: torch.Tensor | None = None, beta: float = 0.0
    ) -> list[torch.Tensor]:
        """∂Φ^β/∂θ at (x, s) summed over the batch, in closed form, ordered as `param_list()`."""
        self._require_phi()
        s = [x, *state]
        grads: list[torch.Tensor] = []
        for i in range(self.n_states):
            layer = self._layers[i]
            c = layer.drive(s[i])[1] if layer.needs_ctx else None
            grads += layer.phi_grads(s[i], s[i + 1], c)
        if self.cost == "ce_readout":
            readout = self._layers[-1]
            if beta == 0.0:
                grads += [torch.zeros_like(readout.weight), torch.zeros_like(readout.bias)]
            else:
                err = torch.softmax(readout.drive(state[-1])[0], dim=1) - y  # ∂ℓ/∂logits
                grads += [g.mul_(-beta) for g in readout.phi_grads(state[-1], err, None)]
        return grads

    def phi_param_grads_diff(
        self,
        x: torch.Tensor,
        state_a: State,
        state_b: State,
        y: torch.Tensor | None,
        beta_a: float,
        beta_b: float,
    ) -> list[torch.Tensor]:
        """∂Φ^{β_a}/∂θ(s_a) − ∂Φ^{β_b}/∂θ(s_b), ordered as `param_list()` (EP's contrast, eq. EP).

        Equal to the difference of two `phi_param_grads` calls, with the first layer's weight
        gradient computed once from the difference of the states (its input x is shared).
        """
        self._require_phi()
        sa, sb = [x, *state_a], [x, *state_b]
        grads: list[torch.Tensor] = []
        for i in range(self.n_states):
            layer = self._layers[i]
            ca = layer.drive(sa[i])[1] if layer.needs_ctx else None
            cb = layer.drive(sb[i])[1] if layer.needs_ctx else None
            grads += layer.phi_grads_diff(sa[i], sa[i + 1], ca, sb[i], sb[i + 1], cb)
        if self.cost == "ce_readout":
            ra = self.phi_param_grads(x, state_a, y, beta_a)[-2:] if beta_a != 0.0 else None
            rb = self.phi_param_grads(x, state_b, y, beta_b)[-2:] if beta_b != 0.0 else None
            readout = self._layers[-1]
            zero = [torch.zeros_like(readout.weight), torch.zeros_like(readout.bias)]
            grads += [a - b for a, b in zip(ra or zero, rb or zero)]
        return grads


class _DensePlan:
    """What a phase of the dense fast path precomputes (eq. fold): κ, g, the weight views and the
    constant terms κ·D_0(x) + c and κ·b_n + c."""

    def __init__(self, net: LayeredNet, x_drive: torch.Tensor):
        act, n = net.activation, net.n_states
        self.k, c = act.scale, act.shift
        self.g = act.base_inplace or (lambda a: a)
        dyn = net._layers[:n]
        self.n = n
        self.fwd_w = [l.weight.t() for l in dyn]
        self.back_w = [l.weight if l.weight_backward is None else l.weight_backward for l in dyn]
        scaled = self.k != 1.0 or c != 0.0
        self.const = [x_drive * self.k + c if scaled else x_drive] + [l.bias * self.k + c for l in dyn[1:]]

    def pre_activation(self, i: int, s: State, const: torch.Tensor) -> torch.Tensor:
        """κ·(∂Φ/∂s_i) + c for layer i from its neighbours in `s` (a fresh tensor)."""
        k, n = self.k, self.n
        if i == 0:
            return torch.addmm(const, s[1], self.back_w[1], alpha=k) if n > 1 else const.clone()
        u = torch.addmm(const, s[i - 1], self.fwd_w[i], alpha=k)
        if i + 1 < n:
            u.addmm_(s[i + 1], self.back_w[i + 1], alpha=k)
        return u


def build_fc(
    sizes: Sequence[int],
    activation: str,
    cost: str = "mse",
    *,
    nudge: str = "inside",
    untied: bool = False,
    gains: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> LayeredNet:
    """A fully connected net of layer sizes `sizes` = (size_0, …, size_N) (the readout last for CE)."""
    layers = [Dense((sizes[i],), sizes[i + 1], backward=untied and i > 0) for i in range(len(sizes) - 1)]
    net = LayeredNet((sizes[0],), layers, activation, cost, nudge)
    init_params(net, gains, generator)
    return net


def init_params(net: LayeredNet, gains: Sequence[float] | None, generator: torch.Generator | None) -> None:
    """PyTorch's default initialisation per layer, scaled by `gains[i]` (one value broadcasts)."""
    n = len(net.layers)
    gains = [1.0] * n if not gains else list(gains)
    if len(gains) == 1:
        gains = gains * n
    if len(gains) != n:
        raise ConfigError(f"net.init_gains has {len(gains)} values for {n} layers")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    for layer, gain in zip(net.layers, gains):
        layer.reset_parameters(gen, gain)
