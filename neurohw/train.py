"""The training loop: `neurohw train models/<card>.toml [key=value ...] [--out runs/<name>] [--resume]`.

A run directory holds `config.toml` (the resolved config), `metrics.jsonl` (one line per epoch:
epoch, train_error, train_loss, val_error, test_error, wall_s, samples_per_s, lrs, and learner
diagnostics such as C-VF's weight angles or, from a learner's `epoch_metrics(net, x, y)` on the
first 256 training samples, DTP's angles to BP), `checkpoint.pt` (the whole training state after the last
finished epoch, written atomically), `best.pt` (the net of the epoch with the lowest validation
error) and `summary.json`. Model selection and early stopping look at the validation error only; the
reported test error is that of the selected epoch.

Device and dtype are chosen once here; every random draw comes from a generator seeded from
`train.seed` (initialisation, shuffling, augmentation) or `learner.seed` (sign of β), all on the CPU,
so a run is reproducible and `--resume` continues bit-for-bit as if never interrupted (on the CPU; on
CUDA only with deterministic algorithms: CUBLAS_WORKSPACE_CONFIG=:4096:8,
torch.use_deterministic_algorithms(True) and no cuDNN autotuning, which `device_settings` turns on for
conv nets). On CUDA the update of ep/cep/cvf runs as a captured CUDA graph (neurohw/program.py).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable

import torch

from neurohw.config import CONTINUAL, RunConfig, to_dict, to_toml
from neurohw.data import Preprocess, Splits, augment, check_net, draw_augment, limit_splits, load_splits, one_hot
from neurohw.distributed import DistContext
from neurohw.errors import ConfigError, DivergenceError
from neurohw.learning import Learner, build_learner, set_initial_angle, weight_angles_deg
from neurohw.learning.cep import ContinualDecay
from neurohw.nets.build import build_net
from neurohw.nets.layered import LayeredNet
from neurohw.program import CAPTURED_LEARNERS, UpdateProgram, draw_epoch
from neurohw.runs import (  # noqa: F401  (RunDir, load_checkpoint and majority_error: the train module's API)
    Run, RunDir, RunState, learning_warnings, load_checkpoint, majority_error, progress_bar,
)

FLAG_CHECK_EVERY = 100  # batches between two reads of the captured update's non-finite flags


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device = '{name}' but CUDA is not available on this machine; use device=cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


# --------------------------------------------------------------------------------- components
def build_model(cfg: RunConfig, input_shape: tuple[int, int, int], n_classes: int) -> LayeredNet:
    """The initialised net of a run (seeded by train.seed; C-VF's feedback angle set by learner.psi_deg)."""
    gen = torch.Generator().manual_seed(cfg.train.seed)
    untied = cfg.learner.algorithm == "cvf"
    net = build_net(cfg.net, input_shape, n_classes, untied=untied, generator=gen)
    if untied:
        set_initial_angle(net, cfg.learner.psi_deg, gen)
    return net


def build_optimizer(net: LayeredNet, cfg) -> torch.optim.Optimizer:
    """One parameter group per layer with its learning rate `train.lrs[i]` (input → output)."""
    n = len(net.layers)
    lrs = list(cfg.lrs) * n if len(cfg.lrs) == 1 else list(cfg.lrs)
    if len(lrs) != n:
        raise ConfigError(f"train.lrs has {len(cfg.lrs)} values but the net has {n} layers (give 1 or {n})")
    groups = [{"params": [p for p in layer.parameters()], "lr": lr} for layer, lr in zip(net.layers, lrs)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=lrs[0], weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.scheduler == "none":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.cosine_epochs or cfg.epochs, eta_min=cfg.lr_min)


@torch.no_grad()
def evaluate(
    learner: Learner, net: LayeredNet, split, preprocess: Preprocess, batch_size: int, ctx: DistContext
) -> float:
    """Error rate of the learner's predictions on a split (sharded over processes)."""
    n = len(split)
    wrong = torch.zeros((), dtype=torch.int64, device=split.labels.device)
    for start in range(ctx.rank * batch_size, n, batch_size * ctx.world_size):
        images, labels = split.images[start : start + batch_size], split.labels[start : start + batch_size]
        wrong += (learner.predict(net, preprocess(images)).argmax(1) != labels).sum()
    return float(ctx.sum(wrong)) / max(n, 1)


@contextlib.contextmanager
def device_settings(device: torch.device, precision: str, *, conv: bool):
    """The CUDA math settings of a run, restored afterwards: TF32 tensor-core products for
    train.precision = 'tf32' (fp32 otherwise: TF32 is off so that fp32 means fp32), and cuDNN's
    autotuning of the convolution algorithms for conv nets (their shapes are static)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = conv or saved[2]
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


# --------------------------------------------------------------------------------------- train
class Trainer:
    """One training run: set-up (or resume), epochs, checkpoints, summary. `train()` drives it."""

    def __init__(
        self, cfg: RunConfig, out: str | Path, *, resume: bool, overwrite: bool, data_dir, splits, progress: bool, log,
        notes: list[str] | tuple[str, ...] = (), use_program: bool = False, distributed: bool = True,
    ):
        self.cfg = cfg
        want = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        # distributed=False: one process trains the whole batch even under torchrun (a sweep's members)
        self.ctx = ctx = DistContext.from_env(want) if distributed else DistContext()
        self.device = resolve_device(cfg.device, ctx.local_rank)
        self.dtype = getattr(torch, cfg.dtype)
        if cfg.train.batch_size % ctx.world_size:
            raise ConfigError(f"train.batch_size = {cfg.train.batch_size} is not divisible by the {ctx.world_size} processes")
        self.say = log if (log is not None and ctx.is_main) else (lambda _: None)
        self.progress = progress and ctx.is_main
        self.run = Run(out, to_dict(cfg), to_toml(cfg), epochs=cfg.train.epochs, patience=cfg.train.patience, resume=resume,
                       overwrite=overwrite, is_main=ctx.is_main, say=log, notes=notes,
                       keys=("net", "optimizer", "learner", "generators"))

        if splits is None:
            splits = load_splits(cfg.data, data_dir)
        else:  # given splits (tests, notebooks) obey the same limits as loaded ones
            splits = limit_splits(splits, cfg.data.limit_train, cfg.data.limit_eval)
        self.info = splits.info
        check_net(self.info, cfg.net)
        self.run.set_data(self.info.fingerprint(), self.info.preprocessing())
        self.train_split, self.val_split, self.test_split = (s.to(self.device) for s in (splits.train, splits.val, splits.test))
        self.net = build_model(cfg, self.info.input_shape, self.info.n_classes).to(device=self.device, dtype=self.dtype)
        # conv nets on CUDA: channels-last tensors (cuDNN's fastest layout); parameters converted once, inputs per batch
        self.memory_format = torch.channels_last if (self.device.type == "cuda" and not self.net.all_dense) else None
        if self.memory_format is not None:
            self.net = self.net.to(memory_format=self.memory_format)
        if cfg.train.precision == "tf32" and self.device.type != "cuda":
            raise ConfigError(f"train.precision = 'tf32' is a CUDA tensor-core mode (device is {self.device}); use fp32 or bf16")
        if cfg.train.precision != "fp32" and cfg.dtype != "float32":
            raise ConfigError(f"train.precision = '{cfg.train.precision}' lowers float32 operands; with dtype = '{cfg.dtype}' use fp32")
        self.learner = build_learner(cfg.learner, cfg.train.precision)
        self.optimizer = build_optimizer(self.net, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.params = self.net.param_list()
        self.preprocess = Preprocess(self.info, self.net.input_shape, self.device, self.dtype)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.augment_gen = torch.Generator().manual_seed(cfg.train.seed + 2)
        self.apply = self._apply
        if cfg.learner.algorithm in CONTINUAL and cfg.train.weight_decay > 0.0:  # eq. C-EP-decay
            self.apply = ContinualDecay(self.optimizer, cfg.train.weight_decay, self.learner.n_updates, step=self._apply)
        self.majority = {
            name: majority_error(split.labels, self.info.n_classes)
            for name, split in (("train", self.train_split), ("val", self.val_split))
        }
        ck = self.run.load(self.device)
        if ck is not None:
            self.load_checkpoint_state(ck)
        self._captured = False
        self.program = self._build_program(use_program)  # after resume: it holds the optimizer's state tensors

    @property
    def state(self):
        return self.run.state

    # ------------------------------------------------------------------- the EpochSource of Run
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "learner": self.learner.state_dict(),
            "generators": {"shuffle": self.shuffle_gen.get_state(), "augment": self.augment_gen.get_state()},
        }

    def load_checkpoint_state(self, ck: dict[str, Any]) -> None:
        self.net.load_state_dict(ck["net"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.learner.load_state_dict(ck["learner"])
        self.shuffle_gen.set_state(ck["generators"]["shuffle"].cpu())
        self.augment_gen.set_state(ck["generators"]["augment"].cpu())

    def best_state(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def error(self, split: str) -> float:
        data = self.val_split if split == "val" else self.test_split
        if not len(data):
            return math.nan
        return evaluate(self.learner, self.net, data, self.preprocess, self.cfg.train.eval_batch_size, self.ctx)

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        line: dict[str, Any] = {"lrs": [g["lr"] for g in self.optimizer.param_groups]}
        if not self.net.symmetric:
            line["weight_angles_deg"] = weight_angles_deg(self.net)
        epoch_metrics = getattr(self.learner, "epoch_metrics", None)
        settling = getattr(self.learner, "settling", None)
        if (epoch_metrics is not None or settling is not None) and self.ctx.is_main:
            x, y = self.diagnostic_batch()
            if epoch_metrics is not None:  # learner diagnostics (DTP's angles to BP)
                line.update(epoch_metrics(self.net, x, y))
            if settling is not None:  # the free phase's convergence (dynamics.settling)
                line.update(settling(self.net, x))
        return line

    def end_epoch(self, epoch: int) -> None:
        if self.scheduler is not None and epoch < (self.cfg.train.cosine_epochs or self.cfg.train.epochs):
            self.scheduler.step()

    def summary_extras(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "algorithm": cfg.learner.algorithm,
            "estimator": cfg.learner.estimator if cfg.learner.algorithm in ("ep", "cep", "cvf") else None,
            "device": str(self.device),
            "update": self.update_kind(),
            "dtype": cfg.dtype,
            "world_size": self.ctx.world_size,
        }

    def _apply(self) -> None:
        self.ctx.average_grads(self.params)
        self.optimizer.step()

    def _n_batches(self) -> int:
        batch, n_train = self.cfg.train.batch_size, len(self.train_split)
        if n_train < batch:
            raise ConfigError(f"train.batch_size = {batch} exceeds the {n_train} training samples")
        return n_train // batch

    def _program_refusal(self) -> str | None:
        """Why this run has no captured update, or None."""
        cfg = self.cfg
        if cfg.learner.algorithm not in CAPTURED_LEARNERS:
            return f"learner.algorithm = '{cfg.learner.algorithm}' has no captured update (only {', '.join(CAPTURED_LEARNERS)})"
        if cfg.train.optimizer != "sgd":
            return f"train.optimizer = '{cfg.train.optimizer}' has no captured update (sgd only)"
        if self.ctx.world_size > 1:
            return "a distributed run all-reduces the gradients between processes at every update, which is not captured"
        return None

    def _build_program(self, use_program: bool) -> UpdateProgram | None:
        """The static update of this run (docs/math.md eq. graph): on CUDA unless
        train.cuda_graphs = false, or when asked (`use_program`, the CPU tests of the program)."""
        mode, cuda = self.cfg.train.cuda_graphs, self.device.type == "cuda"
        if mode == "true" and not cuda:
            raise ConfigError(f"train.cuda_graphs = true needs a CUDA device (device is {self.device}); use auto or false")
        if not (use_program or self.cfg.train.compile or (cuda and mode != "false")):
            return None
        reason = self._program_refusal()
        if reason is not None:
            if mode == "true" or self.cfg.train.compile:
                key = "train.cuda_graphs = true" if mode == "true" else "train.compile = true"
                raise ConfigError(f"{key}: {reason}")
            self.say(f"warning: train.cuda_graphs = auto: {reason}; the update runs eagerly")
            return None
        cfg = self.cfg
        return UpdateProgram(
            self.learner, self.net, self.optimizer, self.train_split, self.preprocess, self.info.n_classes,
            batch=cfg.train.batch_size, n_batches=self._n_batches(),
            padding=cfg.data.crop_padding if cfg.data.augment else None, weight_decay=cfg.train.weight_decay,
            memory_format=self.memory_format, compile=cfg.train.compile,
        )

    def _capture(self) -> None:
        """Capture the program as a CUDA graph; `auto` falls back to the eager program on failure."""
        try:
            self.program.capture()
        except Exception as e:  # capture refuses an op that reads back to the host, or the driver fails
            if self.cfg.train.cuda_graphs == "true":
                raise ConfigError(f"train.cuda_graphs = true: CUDA graph capture failed: {type(e).__name__}: {e}") from None
            self.say(f"warning: train.cuda_graphs = auto: CUDA graph capture failed ({type(e).__name__}: {e}); "
                     "the update runs eagerly")
            self.program.graph = None

    def _train_epoch_program(self, epoch: int) -> tuple[float, float, int]:
        """`train_epoch` with the static update: the epoch's tables uploaded once, then one replay per
        batch; the non-finite flags are read every FLAG_CHECK_EVERY batches (one host round trip)."""
        cfg, prog = self.cfg, self.program
        batch, n_batches = cfg.train.batch_size, self._n_batches()
        padding = cfg.data.crop_padding if cfg.data.augment else None
        tables = draw_epoch(len(self.train_split), n_batches, batch, self.shuffle_gen, self.augment_gen, padding, self.learner.sampler)
        prog.begin_epoch(tables)
        if self.device.type == "cuda" and cfg.train.cuda_graphs != "false" and prog.graph is None and not self._captured:
            self._captured = True
            self._capture()
        snap, start = prog.snapshot(), 0
        bar = _progress(n_batches, f"epoch {epoch + 1}/{cfg.train.epochs}", self.progress)
        for b in range(n_batches):
            prog()
            if (b + 1) % FLAG_CHECK_EVERY == 0 or b + 1 == n_batches:
                bad = prog.flags.read()
                if bad:
                    prog.replay_eagerly(snap, start, b + 1, bad, epoch + 1)
                snap, start = prog.snapshot(), b + 1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        loss_sum, correct = prog.stats()
        n_seen = n_batches * batch
        train_loss = loss_sum / n_seen
        if not math.isfinite(train_loss):
            raise DivergenceError(f"epoch {epoch + 1}: the training loss is {train_loss}; lower the learning rates")
        return train_loss, 1.0 - correct / n_seen, n_seen

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """One pass over the training split: (mean loss, error rate, samples) of the global batches."""
        if self.program is not None:
            return self._train_epoch_program(epoch)
        cfg, ctx, split = self.cfg, self.ctx, self.train_split
        batch, n_train = cfg.train.batch_size, len(split)
        n_batches = self._n_batches()
        shard = ctx.shard(batch)
        perm = torch.randperm(n_train, generator=self.shuffle_gen)[: n_batches * batch].view(n_batches, batch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        bar = _progress(n_batches, f"epoch {epoch + 1}/{cfg.train.epochs}", self.progress)
        for b in range(n_batches):
            idx = perm[b, shard].to(self.device)
            x4 = self.preprocess.float_images(split.images[idx])
            if cfg.data.augment:
                draw = draw_augment(batch, cfg.data.crop_padding, self.augment_gen)[shard]
                x4 = augment(x4, cfg.data.crop_padding, draw)
            x = x4.reshape(x4.shape[0], *self.net.input_shape)
            if self.memory_format is not None:
                x = x.contiguous(memory_format=self.memory_format)
            y = one_hot(split.labels[idx], self.info.n_classes, self.dtype)
            stats = self.learner.step(self.net, x, y, self.apply)
            loss_sum += stats["loss"] * x.shape[0]
            correct += stats["correct"]
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        n_seen = n_batches * batch
        train_loss = float(ctx.sum(loss_sum)) / n_seen
        if not math.isfinite(train_loss):
            raise DivergenceError(f"epoch {epoch + 1}: the training loss is {train_loss}; lower the learning rates")
        return train_loss, 1.0 - float(ctx.sum(correct)) / n_seen, n_seen

    def diagnostic_batch(self, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n training samples, not augmented: the fixed batch of learner diagnostics."""
        split = self.train_split
        images, labels = split.images[:n], split.labels[:n]
        x = self.preprocess.float_images(images).reshape(images.shape[0], *self.net.input_shape)
        return x, one_hot(labels, self.info.n_classes, self.dtype)

    def update_kind(self) -> str:
        """How each batch's update ran: "cuda graph", "program" (the static update, eager) or "eager"."""
        if self.program is None:
            return "eager"
        return "cuda graph" if self.program.graph is not None else "program"

    def learning_warnings(self, line: dict[str, Any]) -> list[str]:
        """Warnings that the epoch of `line` shows a run that does not learn (runs.learning_warnings)."""
        return learning_warnings(line, self.state.history[:-1], self.majority, self.cfg.train.lrs)

    def finished(self) -> str | None:
        return self.run.finished()

    def fit(self) -> dict[str, Any]:
        self.run.start()
        self.ctx.barrier()
        with device_settings(self.device, self.cfg.train.precision, conv=self.memory_format is not None):
            warn = lambda line, earlier: learning_warnings(line, earlier, self.majority, self.cfg.train.lrs)
            wall = self.run.fit(self, warn)
        return self.run.summary(wall, self.summary_extras())


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    splits: Splits | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    notes: list[str] | tuple[str, ...] = (),
    use_program: bool = False,
) -> dict[str, Any]:
    """Train `cfg` into the run directory `out`; returns the summary (also written to summary.json).

    `notes`: warnings about the config (card keys that the overrides made unused, from `load_config`),
    printed once and recorded in summary.json with the learning warnings of the epochs. `use_program`
    runs the static update (neurohw/program.py) eagerly where it would not be captured (CPU tests)."""
    if hasattr(cfg, "pulsed"):  # an in-situ card: the devices are trained (neurohw/substrates/analog/insitu.py)
        from neurohw.substrates.analog.insitu import InSituTrainer

        if use_program:
            raise ConfigError("in-situ training writes pulses to simulated devices: it has no static update program")
        trainer = InSituTrainer(cfg, out, resume=resume, overwrite=overwrite, data_dir=data_dir, splits=splits,
                                progress=progress, log=log, notes=notes)
    else:
        trainer = Trainer(
            cfg, out, resume=resume, overwrite=overwrite, data_dir=data_dir, splits=splits, progress=progress, log=log,
            notes=notes, use_program=use_program,
        )
    return trainer.fit()


_progress = progress_bar
