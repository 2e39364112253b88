"""A training update as one static program, captured as a CUDA graph (docs/design.md, "step and update"; docs/math.md eq. graph).

At the papers' batch sizes an EP update on a GPU is bound by kernel launches and host round trips, not
by arithmetic. `UpdateProgram` runs one update of an EP-family learner with every input that changes
between batches or epochs already on the device:

* per epoch the host uploads the epoch's tables — the batch order, the augmentation draws and the
  signs of β, drawn from the same CPU generators in the same order as the eager loop — and the
  learning rates (and C-EP's per-step decay factors) into device tensors;
* per batch the program reads its batch number from a device counter, gathers and preprocesses the
  batch, builds the one-hot targets, runs the learner's `update` with the drawn sign as a device
  tensor, steps `TensorSGD` (torch.optim.SGD's update with device-tensor learning rates, on the
  optimizer's own momentum buffers), accumulates the loss and the number of right answers, flags
  non-finite states (`dynamics.FiniteFlags`) and advances the counter.

Nothing in `run` reads a value back to the host or branches on data, so on CUDA the whole update is
captured once (`capture`) and replayed per batch; elsewhere `run` executes eagerly (the CPU tests
compare that eager program with the reference path, `Learner.step`). The eager path stays the
reference: the program differs from it by round-off only (the SGD step written as a multiply-add by a
device tensor, and β as a device tensor for random-sign).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from neurohw.data import AugmentDraw, Preprocess, Split, augment, draw_augment, one_hot
from neurohw.dynamics import FiniteFlags
from neurohw.errors import ConfigError, DivergenceError
from neurohw.nets.layered import LayeredNet

CAPTURED_LEARNERS = ("ep", "cep", "cvf")
WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuBLAS/cuDNN initialisation, autotuning)


def sgd_update(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None, neg_lr: torch.Tensor, *,
               weight_decay: float | torch.Tensor = 0.0, momentum: float | torch.Tensor = 0.0,
               factor: torch.Tensor | None = None) -> None:
    """torch.optim.SGD's rule for one parameter, in place, with device-tensor scalars (no host read):
    d = factor·grad + λ·p, v ← μ·v + d (when `buf` is kept), p ← p + (−η)·v. λ and μ are numbers or
    tensors (a population's members each have their own); `factor` is C-EP's per-step gradient factor
    (eq. C-EP-decay). The gradient is consumed: it is scaled in place (no temporary of the parameter's
    size but the decay's and the momentum's; fresh temporaries that large cost page faults on the CPU)."""
    d = grad if factor is None else grad.mul_(factor)
    if isinstance(weight_decay, torch.Tensor):  # products then sums: torch.func.vmap cannot batch addcmul_
        d.add_(p * weight_decay)
    elif weight_decay:
        d.add_(p, alpha=weight_decay)
    if buf is not None:
        buf.mul_(momentum).add_(d)
        p.add_(buf * neg_lr)
    else:
        p.add_(d.mul_(neg_lr))


class TensorSGD:
    """torch.optim.SGD's step (momentum, weight decay; no dampening or Nesterov) with every group's
    learning rate in a device tensor, so that a captured graph follows the schedule.

    It updates the optimizer's own parameters and momentum buffers (created as zeros when absent:
    μ·0 + g = g, exactly torch's first step), so a checkpoint of the optimizer, and the eager path,
    continue where this left off. `sync()` copies the groups' learning rates (set by the scheduler)
    into the tensors, without a host synchronisation.

    For C-EP/C-VF with weight decay (docs/math.md eq. C-EP-decay) `continual_T` gives the number of
    per-step updates per batch: the per-step decay and the gradient factor of each step k are then
    device tensors too, recomputed from the learning rates by `sync()`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, continual_T: int = 0, weight_decay: float = 0.0):
        if not isinstance(optimizer, torch.optim.SGD):
            raise ConfigError(f"the captured update steps SGD only, not {type(optimizer).__name__}")
        self.optimizer, self.T, self.lam = optimizer, int(continual_T), float(weight_decay)
        self.groups = []
        for g in optimizer.param_groups:
            if g.get("nesterov") or g.get("dampening", 0.0) or g.get("maximize"):
                raise ConfigError("the captured update steps plain SGD (no Nesterov, dampening or maximize)")
            p0 = g["params"][0]
            neg_lr = torch.zeros((), device=p0.device, dtype=p0.dtype)
            bufs = []
            for p in g["params"]:
                state = optimizer.state[p]
                if g["momentum"] and state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state.get("momentum_buffer"))
            entry: dict[str, Any] = {"group": g, "neg_lr": neg_lr, "bufs": bufs}
            if self.T and self.lam:
                entry["decay"] = torch.zeros((), device=p0.device, dtype=p0.dtype)
                entry["factors"] = torch.ones(self.T, device=p0.device, dtype=p0.dtype)
            self.groups.append(entry)
        self.k = 0
        self.sync()

    def sync(self) -> None:
        """Copy the groups' learning rates (and the continual decay derived from them) to the device."""
        # torch's LR schedulers check that the optimizer stepped before them; this steps in its place
        self.optimizer._opt_called = True
        for e in self.groups:
            lr = float(e["group"]["lr"])
            e["neg_lr"].fill_(-lr)
            if "decay" in e:  # eq. C-EP-decay: per-step decay (1 − a)/η, gradient of step k divided by a^(T−1−k)
                if lr * self.lam >= 1.0:
                    raise ConfigError(f"train.weight_decay = {self.lam} with the learning rate {lr}: η·λ ≥ 1")
                a = (1.0 - lr * self.lam) ** (1.0 / self.T)
                e["decay"].fill_((1.0 - a) / lr if lr > 0.0 else 0.0)
                e["factors"].copy_(torch.tensor([a ** -(self.T - 1 - k) for k in range(self.T)], dtype=e["factors"].dtype))

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step from the parameters' `.grad` (for C-EP: the next of the batch's T steps)."""
        k = self.k
        for e in self.groups:
            g, decay = e["group"], e.get("decay")
            factor = e["factors"][k] if decay is not None else None
            for p, buf in zip(g["params"], e["bufs"]):
                sgd_update(p, p.grad, buf, e["neg_lr"], weight_decay=decay if decay is not None else g["weight_decay"],
                           momentum=g["momentum"], factor=factor)
        if self.T:
            self.k = (k + 1) % self.T

    def state(self) -> list[torch.Tensor]:
        """The tensors an update changes besides the parameters (momentum buffers)."""
        return [b for e in self.groups for b in e["bufs"] if b is not None]


@dataclass
class EpochTables:
    """What the host draws for an epoch, in the eager loop's order: the batch order (n_batches, B),
    the augmentation draws (or None) and the signs of β (n_batches,) (or None)."""

    order: torch.Tensor
    draws: AugmentDraw | None
    signs: torch.Tensor | None


def draw_epoch(n_train: int, n_batches: int, batch: int, shuffle_gen, augment_gen, padding: int | None, sampler) -> EpochTables:
    """An epoch's tables from the CPU generators, drawn exactly as the eager loop draws them batch by
    batch (each generator is used in the same order; their interleaving does not matter)."""
    order = torch.randperm(n_train, generator=shuffle_gen)[: n_batches * batch].view(n_batches, batch)
    draws = None
    if padding is not None:
        per_batch = [draw_augment(batch, padding, augment_gen) for _ in range(n_batches)]
        draws = AugmentDraw(*(torch.stack([getattr(d, f) for d in per_batch]) for f in ("flip", "top", "left")))
    signs = None
    if sampler is not None and sampler.estimator == "random-sign":
        signs = torch.tensor([sampler.draw_sign() for _ in range(n_batches)])
    return EpochTables(order, draws, signs)


def capture_graph(run: Callable[[], None], mutable: list[torch.Tensor], device: torch.device,
                  reset: Callable[[], None] | None = None) -> "torch.cuda.CUDAGraph":
    """`run` recorded as a CUDA graph: WARMUP_RUNS runs on a side stream first (cuBLAS/cuDNN set-up,
    autotuning), whose effects on the tensors in `mutable` are undone (and `reset()` called), then the
    capture (which records the kernels without running them)."""
    snap = [t.detach().clone() for t in mutable]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    with torch.no_grad():
        for t, v in zip(mutable, snap):
            t.copy_(v)
    if reset is not None:
        reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph


class UpdateProgram:
    """One training update of `learner` on `net` with every per-batch input on the device (module doc)."""

    def __init__(
        self,
        learner,
        net: LayeredNet,
        optimizer: torch.optim.Optimizer,
        train: Split,
        preprocess: Preprocess,
        n_classes: int,
        *,
        batch: int,
        n_batches: int,
        padding: int | None,
        weight_decay: float = 0.0,
        memory_format: torch.memory_format | None = None,
        compile: bool = False,
    ):
        if getattr(learner, "name", None) not in CAPTURED_LEARNERS:
            raise ConfigError(f"learner '{getattr(learner, 'name', learner)}' has no captured update (only {', '.join(CAPTURED_LEARNERS)})")
        p0 = next(net.parameters())
        self.device, self.dtype = p0.device, p0.dtype
        self.learner, self.net, self.train, self.preprocess = learner, net, train, preprocess
        self.n_classes, self.batch, self.n_batches, self.padding = n_classes, batch, n_batches, padding
        self.memory_format = memory_format
        continual = learner.name in ("cep", "cvf")
        self.opt = TensorSGD(optimizer, continual_T=learner.n_updates if continual else 0, weight_decay=weight_decay if continual else 0.0)
        dev = self.device
        self.flags = FiniteFlags(learner.flag_names(), dev)
        self.counter = torch.zeros((), dtype=torch.int64, device=dev)  # the batch number within the epoch
        self.order = torch.zeros(n_batches, batch, dtype=torch.int64, device=dev)
        self.draws = None
        if padding is not None:
            self.draws = AugmentDraw(*(torch.zeros(n_batches, batch, dtype=t, device=dev) for t in (torch.bool, torch.int64, torch.int64)))
        self.signs = None
        if learner.sampler.estimator == "random-sign":
            self.signs = torch.ones(n_batches, dtype=self.dtype, device=dev)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.correct = torch.zeros((), dtype=torch.int64, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        # train.compile: the whole update through torch.compile (fullgraph: a graph break is an error),
        # which fuses its elementwise work; the eager replay of a divergence never uses it
        self._update = torch.compile(self._update_flagged, fullgraph=True) if compile else self._update_flagged

    # ------------------------------------------------------------------------------ per epoch
    def begin_epoch(self, tables: EpochTables) -> None:
        """Upload an epoch's tables and learning rates, reset the counter, statistics and flags."""
        pin = self.device.type == "cuda"
        put = lambda dst, src: dst.copy_(src.pin_memory() if pin else src, non_blocking=pin)
        put(self.order, tables.order)
        if self.draws is not None:
            for f in ("flip", "top", "left"):
                put(getattr(self.draws, f), getattr(tables.draws, f))
        if self.signs is not None:
            put(self.signs, tables.signs.to(self.dtype))
        self.opt.sync()
        self.loss_sum.zero_()
        self.correct.zero_()
        self.counter.zero_()
        self.flags.reset()

    def stats(self) -> tuple[float, int]:
        """(sum of the batch-mean losses × B, right answers) so far this epoch (one host synchronisation)."""
        return float(self.loss_sum), int(self.correct)

    # ----------------------------------------------------------------------------- the update
    def batch_inputs(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(x, y, sign of β) of the batch the counter points at, gathered on the device."""
        b = self.counter.view(1)
        idx = self.order.index_select(0, b).view(-1)
        x4 = self.preprocess.float_images(self.train.images.index_select(0, idx))
        if self.draws is not None:
            draw = AugmentDraw(*(getattr(self.draws, f).index_select(0, b).view(-1) for f in ("flip", "top", "left")))
            x4 = augment(x4, self.padding, draw)
        x = x4.reshape(x4.shape[0], *self.net.input_shape)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        y = one_hot(self.train.labels.index_select(0, idx), self.n_classes, self.dtype)
        sign = self.signs.index_select(0, b).view(()) if self.signs is not None else 1.0
        return x, y, sign

    def run(self, *, check: bool = False) -> None:
        """One update (eagerly — compiled with train.compile — or recorded by `capture`). `check=True`
        checks every phase on the host instead of flagging it (the eager replay that names a divergence)."""
        if check:
            self._update_checked()
        else:
            self._update()

    @torch.no_grad()
    def _update_flagged(self) -> None:
        self._one(self.flags)

    @torch.no_grad()
    def _update_checked(self) -> None:
        self._one(None)

    def _one(self, flags: FiniteFlags | None) -> None:
        x, y, sign = self.batch_inputs()
        stats = self.learner.update(self.net, x, y, sign, self.opt.step, flags=flags)
        self.loss_sum.add_(stats["loss"] * x.shape[0])
        self.correct.add_(stats["correct"])
        self.counter.add_(1)

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.run()

    # -------------------------------------------------------------------------------- state
    def snapshot(self) -> list[torch.Tensor]:
        """Copies of everything an update changes (parameters, momentum buffers, counter, statistics,
        flags), taken on the device without a synchronisation."""
        return [t.detach().clone() for t in self._mutable()]

    def restore(self, snap: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for t, s in zip(self._mutable(), snap):
                t.copy_(s)

    def _mutable(self) -> list[torch.Tensor]:
        return [*self.net.parameters(), *self.opt.state(), self.counter, self.loss_sum, self.correct, self.flags.acc]

    # ------------------------------------------------------------------------------- capture
    def capture(self) -> None:
        """Record one update as a CUDA graph (after warm-up runs on a side stream, whose effects are
        undone); later calls replay it. Needs the epoch's tables uploaded first."""
        if self.device.type != "cuda":
            raise ConfigError("train.cuda_graphs needs a CUDA device")
        self.graph = capture_graph(self.run, self._mutable(), self.device, reset=lambda: setattr(self.opt, "k", 0))

    # ------------------------------------------------------------------------ divergence replay
    def replay_eagerly(self, snap: list[torch.Tensor], start: int, end: int, bad: list[str], epoch: int) -> None:
        """Name where a flagged divergence first happened: restore the state after batch `start` (the
        last clean check) and run batches start+1 … `end` eagerly with host checks, which raise
        DivergenceError naming the phase, layer and step; the epoch and batch are added."""
        self.restore(snap)
        for b in range(start, end):
            try:
                self.run(check=True)
            except DivergenceError as e:
                raise DivergenceError(f"epoch {epoch}, batch {b + 1}: {e}") from None
        raise DivergenceError(
            f"epoch {epoch}, batches {start + 1}…{end}: a non-finite state at the end of the {' and '.join(bad)} "
            "phase (flagged on the device; the eager replay from the last check did not reproduce it); "
            "lower the learning rate or beta"
        )
