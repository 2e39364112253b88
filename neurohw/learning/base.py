"""The learner interface shared by EP, C-EP, C-VF, BPTT and BP.

A learner's `step(net, x, y, apply)` computes parameter updates for one batch, writes them into
`p.grad` with the sign of a loss gradient, averaged over the batch (so that any `torch.optim`
optimizer minimises), and calls `apply()` — which all-reduces the gradients across processes and steps
the optimizer. EP-like learners call `apply` once per batch; C-EP and C-VF call it at every step of
the nudged phase (their updates are local in time). `step` returns batch statistics measured at the
free fixed point: `loss` (mean ℓ) and `correct` (number of right predictions), as 0-dim tensors on
the net's device, so that the training loop need not synchronise with an accelerator every batch.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from neurohw.choices import ESTIMATORS
from neurohw.dynamics import ORDERS, FiniteFlags, relax, settling
from neurohw.errors import ConfigError
from neurohw.nets.layered import LayeredNet, Scalar, State

Apply = Callable[[], None]


class Learner(Protocol):
    name: str

    def step(self, net: LayeredNet, x: torch.Tensor, y: torch.Tensor, apply: Apply) -> dict[str, torch.Tensor]: ...

    def predict(self, net: LayeredNet, x: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def free_phase(
    net: LayeredNet, x: torch.Tensor, steps: int, *, order: str = "sync", flags: FiniteFlags | None = None,
    operands: torch.dtype | None = None,
) -> tuple[torch.Tensor, State]:
    """The input drive D_0(x) and the free fixed point s* after `steps` steps (or async sweeps) from s = 0."""
    net.check_batch(x)
    x_drive = net.input_drive(x, operands)
    return x_drive, relax(net, x_drive, net.init_state(x), steps, phase="free", order=order, flags=flags, operands=operands)


PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16}  # train.precision → the products' operand dtype


def operand_dtype(precision: str) -> torch.dtype | None:
    """The operand dtype of the dynamics' products for `train.precision` (tf32 is a CUDA matmul mode
    set by the trainer, not an operand dtype)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision = '{precision}' is not valid; valid: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


@torch.no_grad()
def batch_stats(net: LayeredNet, state: State, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean loss and number of right predictions of a batch at `state` (0-dim tensors, no sync)."""
    return {
        "loss": net.loss(state, y).mean(),
        "correct": (net.output(state).argmax(1) == y.argmax(1)).sum(),
    }


def set_grads(params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> None:
    """p.grad = g for every parameter (the fresh tensors `grads` are kept, not copied). A learner's
    scale (−1/(βB) for EP) is applied where the gradients are made, on their smallest factors
    (`Dense.phi_grads_diff`, `vf_updates`), not in a pass over weight-shaped tensors here."""
    for p, g in zip(params, grads):
        p.grad = g


class BetaSampler:
    """The pair (β₁, β₂) of the nudged phases per batch (docs/math.md §EP estimators).

    "one-sided" (0, β); "random-sign" (0, ±β) with the sign drawn per batch from this sampler's own
    seeded generator (identical on every process of a distributed run); "symmetric" (−β, +β).
    """

    def __init__(self, beta: float, estimator: str, seed: int, allowed: tuple[str, ...] = ESTIMATORS):
        if estimator not in allowed:
            raise ConfigError(f"learner.estimator '{estimator}' is not available here; valid: {', '.join(allowed)}")
        self.beta, self.estimator = float(beta), estimator
        self.generator = torch.Generator().manual_seed(int(seed))

    def draw_sign(self) -> float:
        """The sign of this batch's β: ±1 drawn from the generator for random-sign (one draw per
        batch), else 1 (nothing drawn)."""
        if self.estimator != "random-sign":
            return 1.0
        return 1.0 if float(torch.rand((), generator=self.generator)) < 0.5 else -1.0

    def betas(self, sign: Scalar = 1.0, beta: Scalar | None = None) -> tuple[Scalar, Scalar]:
        """(β₁, β₂) for a drawn `sign` (a number, or a 0-dim tensor of ±1 on the device); `beta`, when
        given, replaces the sampler's |β| (a population's members each have their own, as a tensor)."""
        b = self.beta if beta is None else beta
        if self.estimator == "one-sided":
            return 0.0, b
        if self.estimator == "symmetric":
            return -b, b
        return 0.0, sign * b

    def draw(self) -> tuple[float, float]:
        return self.betas(self.draw_sign())

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def check_phases(beta: float, T_free: int, T_nudge: int, relaxation: str = "sync") -> None:
    if not beta > 0:
        raise ConfigError(f"learner.beta must be > 0, got {beta}")
    if T_free < 1 or T_nudge < 1:
        raise ConfigError(f"learner.T_free and learner.T_nudge must be ≥ 1, got {T_free} and {T_nudge}")
    if relaxation not in ORDERS:
        raise ConfigError(f"learner.relaxation = '{relaxation}' is not valid; valid: {', '.join(ORDERS)}")


def phase_name(kind: str, beta: Scalar) -> str:
    """A phase's name in error messages: with β's value when it is known on the host."""
    return kind if isinstance(beta, torch.Tensor) else f"{kind} (beta={beta:g})"


class RelaxationPredictor:
    """Prediction by the free phase (shared by the learners that train the recurrent dynamics)."""

    T_free: int
    T_eval: int = 0
    relaxation: str = "sync"
    operands: torch.dtype | None = None

    @torch.no_grad()
    def predict(self, net: LayeredNet, x: torch.Tensor) -> torch.Tensor:
        _, s = free_phase(net, x, self.T_eval or self.T_free, order=self.relaxation, operands=self.operands)
        return net.output(s)

    def settling(self, net: LayeredNet, x: torch.Tensor) -> dict[str, float]:
        """How well the training's free phase (T_free steps) settles on x: dynamics.settling."""
        return settling(net, x, self.T_free, order=self.relaxation)

    def state_dict(self) -> dict:
        sampler = getattr(self, "sampler", None)
        return sampler.state_dict() if sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        sampler = getattr(self, "sampler", None)
        if sampler is not None:
            sampler.load_state_dict(state)
