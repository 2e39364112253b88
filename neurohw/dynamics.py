"""Free and nudged relaxation of a layered net (docs/math.md eq. dyn, async, chains).

`relax` runs T steps of `LayeredNet.phase` (the one closed-form step) from a state: synchronous steps
s_{t+1} = ρ(∂Φ^β/∂s(x, s_t, θ)) (`order="sync"`, the papers' dynamics), or asynchronous sweeps (even
layers, then odd layers from their fresh neighbours, `order="async"`); the input drive D_0(x) is
computed once by the caller and passed in. `step_autograd` is the same step written the usual
research-code way (∂Φ^β/∂s by autograd of Φ, the input drive recomputed every step): the reference for
tests and the baseline of `neurohw bench`.

Non-finite states are looked for once at the end of a phase. Eagerly (`check=True`) that is one host
synchronisation per phase; a non-finite state then has the phase replayed step by step to name the
first layer and step that went non-finite. In a captured update (`flags=FiniteFlags`) nothing is read
on the host: the end of each phase sets a flag on the device, read once per N batches.
"""

from __future__ import annotations

from typing import Callable

import torch

from neurohw.errors import ConfigError, DivergenceError
from neurohw.nets.layered import LayeredNet, Scalar, State
from neurohw.spec import RELAXATIONS

ORDERS = RELAXATIONS


def step_autograd(net: LayeredNet, x: torch.Tensor, state: State, y: torch.Tensor | None, beta: float) -> State:
    """s_{t+1} = ρ(∂Φ^β/∂s) with ∂Φ^β/∂s from autograd of Φ^β (reference implementation; with
    `net.nudge == "outside"` the nudge −β∂ℓ/∂s_N = ∂(Φ^β − Φ)/∂s_N is added after ρ)."""
    with torch.enable_grad():
        s = [t.detach().requires_grad_(True) for t in state]
        grads = torch.autograd.grad(net.phi(x, s, y, beta), s)
        if net.nudge == "outside" and beta != 0.0:
            free = torch.autograd.grad(net.phi(x, s), s)
    with torch.no_grad():
        if net.nudge == "outside" and beta != 0.0:
            out = [net.activation(g) for g in free]
            out[-1] = out[-1] + (grads[-1] - free[-1])
            return out
        return [net.activation(g) for g in grads]


class FiniteFlags:
    """Non-finite states recorded on the device, without a host synchronisation.

    Per phase an accumulator adds 0 × (the sum of the phase's end state): it stays 0 while every state
    is finite and turns NaN for good at the first NaN or ±Inf (0·Inf = NaN) — one kernel per phase
    besides the sum. Which batch and step went first is found by replaying eagerly (program.py).
    """

    def __init__(self, names: tuple[str, ...], device: torch.device | str):
        self.names = tuple(names)
        self.acc = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def record(self, name: str, state: State) -> None:
        if name not in self.names:
            raise ValueError(f"phase '{name}' has no flag (flags: {', '.join(self.names)})")
        self.acc[self.names.index(name)].add_(_total(state), alpha=0.0)

    def reset(self) -> None:
        self.acc.zero_()

    def read(self) -> list[str]:
        """The phases flagged since the last reset (one host synchronisation)."""
        return [n for n, v in zip(self.names, self.acc.tolist()) if v != 0.0]


def relax(
    net: LayeredNet,
    x_drive: torch.Tensor,
    state: State,
    steps: int,
    y: torch.Tensor | None = None,
    beta: Scalar = 0.0,
    *,
    phase: str = "free",
    check: bool = True,
    order: str = "sync",
    flags: FiniteFlags | None = None,
    operands: torch.dtype | None = None,
) -> State:
    """Run `steps` steps (sync) or sweeps (async) from `state` (not modified); the final state.

    A synchronous free phase of an all-dense net runs as two interleaved chains
    (`Phase.free_checkerboard`, half the tensor operations); other phases step by step. With `flags`
    the end state is recorded on the device under `phase` instead of being checked on the host.
    """
    if order not in ORDERS:
        raise ConfigError(f"learner.relaxation = '{order}' is not valid; valid: {', '.join(ORDERS)}")
    ph = net.phase(x_drive, y, beta, operands=operands)
    advance = ph.sweep if order == "async" else ph.step
    if order == "sync" and ph.fold and not ph.nudged:
        s = ph.free_checkerboard(state, steps)
    else:
        s = state
        for _ in range(steps):
            s = advance(s)
    if flags is not None:
        flags.record(phase, s)
    elif check and not _all_finite(s):
        check_finite(s, phase, advance, state, steps)
    return s


def relax_autograd(
    net: LayeredNet, x: torch.Tensor, state: State, steps: int, y: torch.Tensor | None = None,
    beta: float = 0.0, *, phase: str = "free", check: bool = True,
) -> State:
    """`relax` with `step_autograd` (reference; takes the input itself, not its drive)."""
    s = state
    for _ in range(steps):
        s = step_autograd(net, x, s, y, beta)
    if check:
        check_finite(s, phase, lambda r: step_autograd(net, x, r, y, beta), state, steps)
    return s


def _first_bad_layer(state: State) -> int | None:
    for i, t in enumerate(state):
        if not bool(torch.isfinite(t).all()):
            return i
    return None


def _total(state: State) -> torch.Tensor:
    """The sum of every state's sum: a NaN or ±Inf anywhere makes it non-finite (a false alarm needs
    a finite sum to overflow, i.e. states near the float range limit)."""
    total = state[0].sum()
    for t in state[1:]:
        total = total + t.sum()
    return total


def _all_finite(state: State) -> bool:
    return bool(torch.isfinite(_total(state)))


def check_finite(
    final: State, phase: str, step: Callable[[State], State] | None = None, start: State | None = None, steps: int = 0
) -> None:
    """Raise DivergenceError naming the layer (s_1 … s_N) and the first step that went non-finite.

    The phase is replayed from `start` with `step` only once a non-finite value has been found.
    """
    if _all_finite(final):
        return
    bad = _first_bad_layer(final)
    if bad is None:
        raise DivergenceError(f"the state of the {phase} phase is finite but its sum overflows: the states diverge")
    where = ""
    if step is not None and start is not None:
        s = start
        for k in range(1, steps + 1):
            s = step(s)
            layer = _first_bad_layer(s)
            if layer is not None:
                bad, where = layer, f" at step {k}"
                break
    raise DivergenceError(
        f"state of layer {bad + 1} (s_{bad + 1}) became non-finite{where} of the {phase} phase; "
        "lower the learning rate or beta, or check the input for NaN/Inf"
    )


SETTLED_TOL = 1e-2  # a diagnostic input counts as settled when ‖G(s*) − s*‖ ≤ SETTLED_TOL·‖s*‖ (1 %)
LOOP_GAIN_MAX_UNITS = 600  # the loop gain is computed when the smaller parity of the state has at most this many units


def settling(
    net: LayeredNet, x: torch.Tensor, steps: int, *, order: str = "sync", n_gain: int = 32,
) -> dict[str, float]:
    """How well the free phase has settled after `steps` steps on the batch x (docs/math.md eq. settle).

    With G one more step (sync) or sweep (async) from the free state s* and r = ‖G(s*) − s*‖ / ‖s*‖ per
    input: `free_residual_max`, `free_residual_median` and `free_unsettled`, the fraction of inputs with
    r > SETTLED_TOL. When the smaller parity of the state (layers 0, 2, … or 1, 3, …) has |P| ≤
    LOOP_GAIN_MAX_UNITS units, the loop gain at s* of the first `n_gain` inputs (fewer, n_gain·(128/|P|)³
    but at least 4, when |P| > 128: the eigenvalues cost |P|³ per input): the spectral radius of the
    two-step map's Jacobian J², J = ∂F/∂s
    of the synchronous free step at s* (a layered step is bipartite: J² is block-diagonal, with the
    eigenvalues of the smaller block; an async sweep's Jacobian has the same spectral radius). s* attracts
    when it is < 1 and repels when it is > 1 (the two chains of the sync dynamics then part: oscillation
    or a second fixed point). `loop_gain_max`, `loop_gain_median`, `loop_gain_over_1` (fraction ≥ 1).
    """
    with torch.no_grad():
        drive = net.input_drive(x)
        s = relax(net, drive, net.init_state(x), steps, order=order, check=False)
        g = relax(net, drive, s, 1, order=order, check=False)
        v, w = _flat(s), _flat(g)
        r = (w - v).norm(dim=1) / v.norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    out = {
        "free_residual_max": float(r.max()), "free_residual_median": float(r.median()),
        "free_unsettled": float((r > SETTLED_TOL).to(torch.float64).mean()),
    }
    sizes = [t[0].numel() for t in s]
    p = min(sum(sizes[0::2]), sum(sizes[1::2])) if len(sizes) > 1 else 0
    if p > LOOP_GAIN_MAX_UNITS:
        return out
    n = n_gain if p <= 128 else max(4, int(n_gain * (128 / p) ** 3))
    gain = loop_gain(net, drive[:n], [t[:n] for t in s])
    out.update({"loop_gain_max": float(gain.max()), "loop_gain_median": float(gain.median()),
                "loop_gain_over_1": float((gain >= 1.0).to(torch.float64).mean())})
    return out


def loop_gain(net: LayeredNet, x_drive: torch.Tensor, state: State) -> torch.Tensor:
    """Per input, the spectral radius of J² for J = ∂F/∂s, the synchronous free step's Jacobian at `state`
    (see `settling`). J² is block-diagonal over the two parities; its block on the smaller parity P is
    J[P, Q] J[Q, P], whose row i is eᵢᵀJJ restricted to P: two vector–Jacobian products of `net.step` per
    unit of P, for every input at once (a step acts on each input alone). Eigenvalues in float64, on the CPU."""
    sizes = [t[0].numel() for t in state]
    shapes = [tuple(t.shape[1:]) for t in state]
    bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    # layers of one parity feed only the other: J maps odd-layer units to even ones and back
    parity = [torch.cat([torch.arange(bounds[k], bounds[k + 1]) for k in range(p, len(sizes), 2)])
              for p in (0, 1) if p < len(sizes)]
    n = x_drive.shape[0]
    if len(parity) < 2:  # one layer of state: J = 0 (a free step does not feed a layer back to itself)
        return torch.zeros(n, dtype=torch.float64)
    small = min(parity, key=len).to(x_drive.device)
    drive, v = x_drive.detach(), _flat(state).detach()

    def step(u: torch.Tensor) -> torch.Tensor:
        parts = [u[:, bounds[k] : bounds[k + 1]].reshape(n, *shape) for k, shape in enumerate(shapes)]
        return _flat(net.step(drive, parts))

    with torch.enable_grad():
        _, vjp = torch.func.vjp(step, v)
        eye = torch.zeros(len(small), n, v.shape[1], dtype=v.dtype, device=v.device)
        eye[torch.arange(len(small)), :, small] = 1.0  # e_i for every input
        rows = torch.func.vmap(lambda e: vjp(vjp(e)[0])[0])(eye)  # (|P|, n, d): eᵢᵀ J J per input
    loop = rows[:, :, small].permute(1, 0, 2).detach().to(device="cpu", dtype=torch.float64)  # (n, |P|, |P|)
    return torch.linalg.eigvals(loop).abs().max(dim=1).values


def _flat(state: State) -> torch.Tensor:
    return torch.cat([t.flatten(1) for t in state], 1)
