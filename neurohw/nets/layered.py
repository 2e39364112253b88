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

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neurohw.core.activations import get_activation
from neurohw.errors import ConfigError
from neurohw.nets.layers import Conv2d, Dense, LowPrecision, _batched, addmm, scaled
from neurohw.spec import COSTS, NUDGES

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
    def input_drive(self, x: torch.Tensor, operands: torch.dtype | None = None) -> torch.Tensor:
        """D_0(x), the drive of the clamped input on s_1, computed once per batch (its operands in
        `operands` precision when given, eq. precision)."""
        return self._layers[0].drive(x, None if operands is None else LowPrecision(operands))[0]

    def phase(
        self, x_drive: torch.Tensor, y: torch.Tensor | None = None, beta: Scalar = 0.0, *, fold: bool | None = None,
        operands: torch.dtype | None = None,
    ) -> "Phase":
        """The dynamics of one phase at fixed θ (see `Phase`); `fold` defaults to the fast folded form
        for all-dense nets without autograd (eq. fold)."""
        if fold is None:
            fold = self.all_dense and not torch.is_grad_enabled()
        return Phase(self, x_drive, y, beta, fold=fold, operands=operands)

    def step(
        self, x_drive: torch.Tensor, state: State, y: torch.Tensor | None = None, beta: Scalar = 0.0,
        operands: torch.dtype | None = None,
    ) -> State:
        """One synchronous step s_{t+1} = ρ(∂Φ^β/∂s(x, s_t, θ)) in closed form (eq. dyn, dyn-out), the
        arguments of ρ computed whole (drive + feedback) and ρ applied after (the unfolded form).

        Under `torch.no_grad()` the activation is applied in place on fresh buffers; with grad
        enabled (BPTT) every op is out of place and differentiable.
        """
        return Phase(self, x_drive, y, beta, fold=False, operands=operands).step(state)

    def pre_activations(
        self, x_drive: torch.Tensor, state: State, y: torch.Tensor | None = None, beta: Scalar = 0.0
    ) -> State:
        """The arguments a_n of ρ in `step` (with the nudge −β ∂ℓ/∂s_N when `nudge = "inside"`)."""
        return Phase(self, x_drive, y, beta, fold=False).pre_activations(state)

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
            if _is_zero(beta):
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
        scale: Scalar = 1.0,
    ) -> list[torch.Tensor]:
        """scale · (∂Φ^{β_a}/∂θ(s_a) − ∂Φ^{β_b}/∂θ(s_b)), ordered as `param_list()` (EP's contrast, eq. EP).

        Equal to the difference of two `phi_param_grads` calls, with the first layer's weight
        gradient computed once from the difference of the states (its input x is shared). `scale` is
        a number or a 0-dim tensor (`Dense.phi_grads_diff` says where a population applies it).
        """
        self._require_phi()
        sa, sb = [x, *state_a], [x, *state_b]
        grads: list[torch.Tensor] = []
        for i in range(self.n_states):
            layer = self._layers[i]
            ca = layer.drive(sa[i])[1] if layer.needs_ctx else None
            cb = layer.drive(sb[i])[1] if layer.needs_ctx else None
            grads += layer.phi_grads_diff(sa[i], sa[i + 1], ca, sb[i], sb[i + 1], cb, scale=scale)
        if self.cost == "ce_readout":
            ra = self.phi_param_grads(x, state_a, y, beta_a)[-2:] if not _is_zero(beta_a) else None
            rb = self.phi_param_grads(x, state_b, y, beta_b)[-2:] if not _is_zero(beta_b) else None
            readout = self._layers[-1]
            zero = [torch.zeros_like(readout.weight), torch.zeros_like(readout.bias)]
            grads += scaled([a - b for a, b in zip(ra or zero, rb or zero)], scale)
        return grads


Scalar = float | torch.Tensor  # a per-phase scalar: a number, or a 0-dim tensor on the net's device


def _axpy(out: torch.Tensor, t: torch.Tensor, coef: Scalar, inplace: bool) -> torch.Tensor:
    """out + coef·t (in place when `inplace`); a tensor `coef` stays on the device (no host sync)."""
    if isinstance(coef, torch.Tensor):  # a product then a sum (torch.func.vmap cannot batch addcmul_)
        return out.add_(t * coef) if inplace else out + t * coef
    return out.add_(t, alpha=coef) if inplace else out.add(t, alpha=coef)


def _add_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, coef: Scalar) -> torch.Tensor:
    """out + coef·(a @ b), a fresh tensor (the same numbers as in-place `addmm_`, which torch.func.vmap
    cannot batch: a population of nets runs this step under vmap)."""
    if isinstance(coef, torch.Tensor):
        return addmm(out, a * coef, b)
    return addmm(out, a, b, alpha=coef)


def _is_zero(beta: Scalar) -> bool:
    """β = 0 is known on the host: a tensor β (a drawn sign on the device) is never taken as 0."""
    return not isinstance(beta, torch.Tensor) and beta == 0.0


class Phase:
    """One phase of the dynamics at fixed θ: what it precomputes and its step (docs/math.md eq. dyn,
    dyn-out, fold, async). Every path that relaxes a net uses it: the free and nudged phases of the
    learners (eager or captured in a CUDA graph), BPTT's differentiable steps, the GDU check.

    Two arithmetic forms of the same step:

    * unfolded (`fold=False`; conv nets, autograd, single `LayeredNet.step` calls): the argument a_n
      of ρ is the drive from below plus the feedback from above (with the nudge −β∂ℓ/∂s_N inside ρ),
      then ρ is applied whole (in place on fresh buffers without autograd);
    * folded (`fold=True`; all-dense nets without autograd): ρ(a) = g(κ·a + c) with κ and c folded
      into the matrix products and into constants computed once per phase (κ·D_0(x) + c, κ·b_n + c,
      κβy for the MSE nudge inside ρ), so that a layer's update is one or two `addmm` and g in place.

    β is a number, or a 0-dim tensor on the net's device (a drawn sign times |β|, updated between
    batches without a host synchronisation): the same operations then take it as a tensor operand.
    Updates run synchronously (`step`: all layers from s_t) or asynchronously (`sweep`: even layers,
    then odd layers from their fresh neighbours); `free_checkerboard` runs a sync free phase as two
    interleaved chains (eq. chains).
    """

    def __init__(
        self, net: "LayeredNet", x_drive: torch.Tensor, y: torch.Tensor | None, beta: Scalar, *, fold: bool,
        operands: torch.dtype | None = None,
    ):
        if fold and not (net.all_dense and not torch.is_grad_enabled()):
            raise ValueError("the folded form needs an all-dense net and no autograd")
        self.lp = None if operands is None else LowPrecision(operands)  # eq. precision: the products' operands
        self.net, self.layers, self.n = net, net._layers, net.n_states
        self.x_drive, self.y, self.beta, self.fold = x_drive, y, beta, fold
        self.inplace = not torch.is_grad_enabled()
        self.nudged = not _is_zero(beta)
        self.inside = net.nudge == "inside"
        self.readout = self.layers[-1] if (self.nudged and net.cost == "ce_readout") else None
        self.nudge_mse = self.nudged and net.cost == "mse"
        self.neg_beta = -beta  # computed once per phase (a tensor β: one device op, not one per step)
        if fold:
            act = net.activation
            self.k, c = act.scale, act.shift
            self.g = act.base_inplace or (lambda a: a)
            dyn = self.layers[: self.n]
            self.fwd_w = [l.weight.t() for l in dyn]
            self.back_w = [l.weight if l.weight_backward is None else l.weight_backward for l in dyn]
            # c + k·(a @ w): torch.addmm, or under torch.func.vmap (a population) the form vmap batches fast;
            # chosen once per phase, not at every product of every step
            self.mm = addmm if _batched(dyn[0].weight) else torch.addmm
            scaled = self.k != 1.0 or c != 0.0
            self.neg_k_beta = -self.k * beta
            self.const = [x_drive * self.k + c if scaled else x_drive] + [l.bias * self.k + c for l in dyn[1:]]
            if self.nudge_mse and self.inside:
                self.const[-1] = self.const[-1] + (self.k * beta) * y
            self.beta_y = beta * y if self.nudge_mse and not self.inside else None

    # ------------------------------------------------------------------------------ unfolded
    def _unfolded(self, s: State, which: range) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """{i: a_i} for the layers in `which` from the state `s` (fresh tensors), and ∂ℓ/∂s_N when the
        nudge is added outside ρ (else None). Each drive D_j(s_{j−1}) needed (as a layer's input, or
        for the max-pool indices of the feedback into s_{j−1}) is computed once."""
        layers, n = self.layers, self.n
        need = sorted({i for i in which if i > 0} | {i + 1 for i in which if i + 1 < n and layers[i + 1].needs_ctx})
        drives = {j: layers[j].drive(s[j - 1], self.lp) for j in need}
        pre, outside = {}, None
        for i in which:
            fwd = self.x_drive if i == 0 else drives[i][0]
            if i + 1 < n:
                ctx = drives[i + 1][1] if layers[i + 1].needs_ctx else None
                a = layers[i + 1].feedback_add(fwd, s[i + 1], ctx, self.lp)
            elif i == 0:
                a = self.x_drive.clone()
            else:
                a = fwd
            if i == n - 1 and self.nudged:
                g = self.net.cost_grad(s[i], self.y)
                if self.inside:
                    a = _axpy(a, g, self.neg_beta, self.inplace)
                else:
                    outside = g
            pre[i] = a
        return pre, outside

    def pre_activations(self, s: State) -> State:
        """The arguments a_n of ρ of a synchronous step from `s` (nudge inside ρ included)."""
        pre, _ = self._unfolded(s, range(self.n))
        return [pre[i] for i in range(self.n)]

    def _apply_unfolded(self, pre: dict[int, torch.Tensor], outside: torch.Tensor | None) -> dict[int, torch.Tensor]:
        act, out = self.net.activation, {}
        for i, a in pre.items():
            r = act.inplace(a) if self.inplace else act(a)
            if i == self.n - 1 and outside is not None:
                r = _axpy(r, outside, self.neg_beta, self.inplace)
            out[i] = r
        return out

    # -------------------------------------------------------------------------------- folded
    def pre_activation(self, i: int, s: State, const: torch.Tensor) -> torch.Tensor:
        """Folded form: κ·(∂Φ/∂s_i) + c for layer i from its neighbours in `s` (a fresh tensor)."""
        k, n, lp = self.k, self.n, self.lp
        if lp is not None:
            if i == 0:
                return lp.addmm(const, s[1], self.back_w[1], alpha=k) if n > 1 else const.clone()
            u = lp.addmm(const, s[i - 1], self.fwd_w[i], alpha=k)
            return lp.addmm(u, s[i + 1], self.back_w[i + 1], alpha=k) if i + 1 < n else u
        mm = self.mm
        if i == 0:
            return mm(const, s[1], self.back_w[1], alpha=k) if n > 1 else const.clone()
        u = mm(const, s[i - 1], self.fwd_w[i], alpha=k)
        if i + 1 < n:
            u = mm(u, s[i + 1], self.back_w[i + 1], alpha=k)  # not addmm_: vmap (populations) cannot batch it
        return u

    def _softmax_error(self, s_last: torch.Tensor) -> torch.Tensor:
        r = self.readout
        return torch.softmax(addmm(r.bias, s_last, r.weight.t()), dim=1).sub_(self.y)

    def _update_folded(self, i: int, s: State, const: torch.Tensor | None = None) -> torch.Tensor:
        """Layer i's new state from `s` in the folded form, the nudge included."""
        u = self.pre_activation(i, s, self.const[i] if const is None else const)
        last = i == self.n - 1
        if last and self.inside and self.nudged:
            if self.nudge_mse:
                u = _axpy(u, s[i], self.neg_k_beta, True)
            else:
                u = _add_mm(u, self._softmax_error(s[i]), self.readout.weight, self.neg_k_beta)
        r = self.g(u)
        if last and not self.inside and self.nudged:
            if self.nudge_mse:
                _axpy(r, s[i], self.neg_beta, True).add_(self.beta_y)
            else:
                r = _add_mm(r, self._softmax_error(s[i]), self.readout.weight, self.neg_beta)
        return r

    # --------------------------------------------------------------------------------- steps
    def step(self, s: State) -> State:
        """One synchronous step: every layer from `s` (not modified); fresh tensors."""
        if self.fold:
            return [self._update_folded(i, s) for i in range(self.n)]
        new = self._apply_unfolded(*self._unfolded(s, range(self.n)))
        return [new[i] for i in range(self.n)]

    def sweep(self, s: State) -> State:
        """One asynchronous sweep (eq. async): the even layers (s_1, s_3, …) from `s`, then the odd
        ones from their fresh neighbours; `s` is not modified."""
        t = list(s)
        for parity in (0, 1):
            which = range(parity, self.n, 2)
            if self.fold:
                for i in which:  # same-parity layers do not interact: the order within a half is free
                    t[i] = self._update_folded(i, t)
            else:
                for i, r in self._apply_unfolded(*self._unfolded(t, which)).items():
                    t[i] = r
        return t

    def free_checkerboard(self, state: State, steps: int) -> State:
        """`steps` synchronous free steps (β = 0) of an all-dense net, computed as two interleaved chains.

        Without nudging the synchronous dynamics is bipartite: layer i at step t depends only on
        layers i ± 1 at step t − 1, so the (layer, step) pairs with i + t even and those with i + t odd
        form two independent chains (docs/math.md eq. chains). Running chain B one step ahead of
        chain A, both update the same layers at every step; stacking the two chains along the batch
        axis makes a step one `addmm` per connection direction of half the layers on 2B rows,
        instead of all layers on B rows: half the tensor operations for the same arithmetic. The
        result equals `steps` calls of `step` (tested); layers with i ≡ steps (mod 2) come from chain
        A, the others from chain B.
        """
        if not self.fold or self.nudged:
            raise ValueError("free_checkerboard needs the folded form of a free phase")
        n, b, g = self.n, self.x_drive.shape[0], self.g
        const_2b = [torch.cat([self.const[0], self.const[0]])] + list(self.const[1:])
        z = [torch.cat([t, t]) for t in state]  # rows [:b] chain A, [b:] chain B
        # prelude: chain B's even layers at step 1, from its odd layers at step 0
        half = [t[b:] for t in z]
        for i in range(0, n, 2):
            z[i] = torch.cat([z[i][:b], g(self.pre_activation(i, half, self.const[i]))])
        for t in range(1, steps + 1):
            for i in range(t % 2, n, 2):  # chain A at step t, chain B at step t + 1
                z[i] = g(self.pre_activation(i, z, const_2b[i]))
        return [z[i][:b] if i % 2 == steps % 2 else z[i][b:] for i in range(n)]


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
