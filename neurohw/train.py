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
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from neurohw import __version__
from neurohw.config import CONTINUAL, RunConfig, to_dict, to_toml
from neurohw.data import Preprocess, Splits, augment, draw_augment, limit_splits, load_splits, one_hot
from neurohw.distributed import DistContext
from neurohw.errors import CheckpointError, ConfigError, DivergenceError
from neurohw.io.atomic import write_text, write_with
from neurohw.learning import Learner, build_learner, set_initial_angle, weight_angles_deg
from neurohw.learning.cep import ContinualDecay
from neurohw.nets.build import build_net
from neurohw.nets.layered import LayeredNet
from neurohw.program import CAPTURED_LEARNERS, UpdateProgram, draw_epoch

CHECKPOINT_FORMAT = "neurohw-checkpoint"
CHECKPOINT_VERSION = 1
# keys that may differ between a checkpoint's config and the config it is resumed with (the span of a
# cosine schedule, cosine_epochs or epochs, must stay the same: `check_extension`)
RESUMABLE_CHANGES = {
    ("train", "epochs"), ("train", "cosine_epochs"), ("train", "patience"), ("train", "eval_batch_size"), ("device",),
}
# a run is said not to learn when an error is within this many points of the majority-class error, or
# when its training loss exceeds this factor times its lowest value so far (docs/results.md §1 shows
# healthy runs: their loss never rises above 1.5× its minimum before a collapse)
CHANCE_MARGIN = 0.10
FLAG_CHECK_EVERY = 100  # batches between two reads of the captured update's non-finite flags
LOSS_RISE_FACTOR = 2.0


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


# ------------------------------------------------------------------------------------ run dir
class RunDir:
    """The files of a run directory (attributes config, metrics, checkpoint, best, summary)."""

    FILES = {
        "config": "config.toml",
        "metrics": "metrics.jsonl",
        "checkpoint": "checkpoint.pt",
        "best": "best.pt",
        "summary": "summary.json",
    }

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for attr, name in self.FILES.items():
            setattr(self, attr, self.root / name)

    def artefacts(self) -> list[Path]:
        return [self.root / name for name in self.FILES.values()]


@dataclass
class TrainState:
    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    best_test: float = math.nan
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


STATE_KEYS = ("epoch", "best_val", "best_epoch", "best_test", "history", "warnings")


def check_extension(old: dict[str, Any], cfg: RunConfig) -> None:
    """Refuse a resume whose train.epochs / cosine_epochs would change the learning-rate schedule of
    the epochs already trained, or extend a cosine schedule that ended at learning rate 0.

    The cosine schedule anneals from train.lrs to train.lr_min over its span S = cosine_epochs (0:
    epochs), then stays at lr_min. Extending a run keeps S (pass train.cosine_epochs = S when S came
    from train.epochs); the extra epochs then train at lr_min, which must be > 0.
    """
    t_old, t_new = old["train"], cfg.train
    if t_new.scheduler != "cosine":
        return
    span_old = t_old["cosine_epochs"] or t_old["epochs"]
    span_new = t_new.cosine_epochs or t_new.epochs
    if span_new != span_old:
        how = f"train.cosine_epochs = {t_old['cosine_epochs']}" if t_old["cosine_epochs"] else \
            f"train.cosine_epochs = 0, so it spans train.epochs = {t_old['epochs']}"
        raise CheckpointError(
            f"--resume with train.epochs = {t_new.epochs}, train.cosine_epochs = {t_new.cosine_epochs}: the run's "
            f"cosine schedule anneals over {span_old} epochs ({how}); a span of {span_new} epochs would change the "
            f"learning rates of the epochs already trained. To train on after the annealing at the constant "
            f"train.lr_min, add train.cosine_epochs={span_old}; to anneal over {t_new.epochs} epochs, start a new run"
        )
    if t_new.epochs > span_old and t_new.lr_min == 0.0:
        raise CheckpointError(
            f"--resume with train.epochs = {t_new.epochs}: the run's cosine schedule ends at epoch {span_old} with "
            f"train.lr_min = 0, so epochs {span_old + 1}…{t_new.epochs} would train at learning rate 0 and change "
            f"nothing; start a new run with train.epochs = {t_new.epochs} instead"
        )


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


def majority_error(labels: torch.Tensor, n_classes: int) -> float:
    """The error of always predicting the most frequent class of `labels` (1 − 1/K when balanced)."""
    if len(labels) == 0:
        return math.nan
    counts = torch.bincount(labels.long(), minlength=n_classes)
    return 1.0 - float(counts.max()) / len(labels)


def _config_diff(a: dict, b: dict, prefix: tuple = ()) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = (*prefix, k)
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, key)
        elif va != vb and key not in RESUMABLE_CHANGES:
            out.append(f"{'.'.join(key)}: checkpoint {va!r}, now {vb!r}")
    return out


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by `train`; CheckpointError names the file if it is missing or corrupt."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or unreadable: {type(e).__name__}: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a neurohw checkpoint (no format = '{CHECKPOINT_FORMAT}')")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint '{path}' has version {ck.get('version')}, this neurohw reads {CHECKPOINT_VERSION}")
    for key in ("config", "epoch", "net", "optimizer", "learner", "generators", "state"):
        if key not in ck:
            raise CheckpointError(f"checkpoint '{path}' lacks the entry '{key}'")
    return ck


def _prepare_run_dir(run: RunDir, resume: bool, overwrite: bool) -> None:
    if resume:
        if not run.checkpoint.exists():
            raise CheckpointError(f"--resume: no checkpoint at '{run.checkpoint}'")
        return
    existing = [p for p in run.artefacts() if p.exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"run directory '{run.root}' already holds a run ({existing[0].name}); "
            "pass --resume to continue it, --overwrite to replace it, or another --out"
        )
    for p in existing:
        p.unlink()
    run.root.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------- train
class Trainer:
    """One training run: set-up (or resume), epochs, checkpoints, summary. `train()` drives it."""

    def __init__(
        self, cfg: RunConfig, out: str | Path, *, resume: bool, overwrite: bool, data_dir, splits, progress: bool, log,
        notes: list[str] | tuple[str, ...] = (), use_program: bool = False,
    ):
        self.cfg = cfg
        want = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.ctx = ctx = DistContext.from_env(want)
        self.device = resolve_device(cfg.device, ctx.local_rank)
        self.dtype = getattr(torch, cfg.dtype)
        self.run = RunDir(out)
        if cfg.train.batch_size % ctx.world_size:
            raise ConfigError(f"train.batch_size = {cfg.train.batch_size} is not divisible by the {ctx.world_size} processes")
        if ctx.is_main:
            _prepare_run_dir(self.run, resume, overwrite)
        ctx.barrier()
        self.say = log if (log is not None and ctx.is_main) else (lambda _: None)
        self.progress = progress and ctx.is_main

        if splits is None:
            splits = load_splits(cfg.data, data_dir)
        else:  # given splits (tests, notebooks) obey the same limits as loaded ones
            splits = limit_splits(splits, cfg.data.limit_train, cfg.data.limit_eval)
        self.info = splits.info
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
            self.apply = ContinualDecay(self.optimizer, cfg.train.weight_decay, cfg.learner.T_nudge, step=self._apply)
        self.majority = {
            name: majority_error(split.labels, self.info.n_classes)
            for name, split in (("train", self.train_split), ("val", self.val_split))
        }
        self.state = TrainState(warnings=list(notes))
        for note in notes:
            self.say(f"warning: {note}")
        if resume:
            self._resume()
        self._captured = False
        self.program = self._build_program(use_program)  # after resume: it holds the optimizer's state tensors
        if ctx.is_main:
            write_text(self.run.config, to_toml(cfg))

    def _resume(self) -> None:
        ck = load_checkpoint(self.run.checkpoint, self.device)
        diff = _config_diff(ck["config"], to_dict(self.cfg))
        if diff:
            raise CheckpointError(f"--resume: the config differs from the checkpoint's in {'; '.join(diff)}")
        check_extension(ck["config"], self.cfg)
        self.net.load_state_dict(ck["net"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.learner.load_state_dict(ck["learner"])
        self.shuffle_gen.set_state(ck["generators"]["shuffle"].cpu())
        self.augment_gen.set_state(ck["generators"]["augment"].cpu())
        self.state = TrainState(**ck["state"])
        if self.ctx.is_main:  # drop the lines of an epoch that never reached its checkpoint
            write_text(self.run.metrics, "".join(json.dumps(line) + "\n" for line in self.state.history))
        self.say(f"resumed '{self.run.root}' after epoch {self.state.epoch}")

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

    def save(self, epoch: int, line: dict[str, Any], improved: bool) -> None:
        """Append the epoch's metrics line; write best.pt if improved and the checkpoint (atomically)."""
        if not self.ctx.is_main:
            return
        with open(self.run.metrics, "a") as f:
            f.write(json.dumps(line) + "\n")
        net_state = self.net.state_dict()
        if improved:
            write_with(self.run.best, lambda f: torch.save({"epoch": epoch + 1, "net": net_state}, f))
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "neurohw_version": __version__,
            "config": to_dict(self.cfg),
            "epoch": epoch + 1,
            "net": net_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "learner": self.learner.state_dict(),
            "generators": {"shuffle": self.shuffle_gen.get_state(), "augment": self.augment_gen.get_state()},
            "state": {k: getattr(self.state, k) for k in STATE_KEYS},
        }
        write_with(self.run.checkpoint, lambda f: torch.save(checkpoint, f))

    def update_kind(self) -> str:
        """How each batch's update ran: "cuda graph", "program" (the static update, eager) or "eager"."""
        if self.program is None:
            return "eager"
        return "cuda graph" if self.program.graph is not None else "program"

    def learning_warnings(self, line: dict[str, Any]) -> list[str]:
        """Warnings that the epoch of `line` shows a run that does not learn (see CHANCE_MARGIN)."""
        out, e = [], line["epoch"]
        lrs = "[" + ", ".join(f"{lr:g}" for lr in self.cfg.train.lrs) + "]"
        near = [
            f"the {name} error {100 * line[key]:.1f} % (majority class: {100 * self.majority[split]:.1f} %)"
            for name, key, split in (("training", "train_error", "train"), ("validation", "val_error", "val"))
            if line[key] > self.majority[split] - CHANCE_MARGIN  # NaN (no validation split) never warns
        ]
        if near:
            out.append(
                f"epoch {e}: {' and '.join(near)} within {100 * CHANCE_MARGIN:.0f} points of always answering the "
                f"majority class: the net is not learning. Likely causes: train.lrs = {lrs} too large (the weights "
                "jump and the states saturate) or too small, learner.beta too small, or too few relaxation steps "
                "(learner.T_free) for the dynamics to settle"
            )
        earlier = [h["train_loss"] for h in self.state.history[:-1]]
        if earlier and line["train_loss"] > LOSS_RISE_FACTOR * min(earlier):
            k = min(range(len(earlier)), key=lambda i: earlier[i])
            out.append(
                f"epoch {e}: the training loss {line['train_loss']:.4g} is more than {LOSS_RISE_FACTOR:g}× its lowest "
                f"value {earlier[k]:.4g} (epoch {k + 1}): training is diverging. Likely cause: learning rates too large "
                f"for this stage of training (train.lrs = {lrs}, lrs this epoch {[round(lr, 6) for lr in line['lrs']]})"
            )
        return out

    def finished(self) -> str | None:
        """Why there is nothing left to train (run complete, or stopped by patience), or None."""
        cfg, state = self.cfg, self.state
        if state.epoch >= cfg.train.epochs:
            return (
                f"'{self.run.root}' is already complete: {state.epoch} of train.epochs = {cfg.train.epochs} epochs trained; "
                "nothing to do (to train longer: --resume with a larger train.epochs)"
            )
        stale = state.epoch - state.best_epoch
        if cfg.train.patience and state.epoch and stale >= cfg.train.patience:
            return (
                f"'{self.run.root}' stopped early after epoch {state.epoch}: no better validation error for {stale} epochs "
                f"(train.patience = {cfg.train.patience}); nothing to do (to go on: --resume with a larger train.patience)"
            )
        return None

    def fit(self) -> dict[str, Any]:
        with device_settings(self.device, self.cfg.train.precision, conv=self.memory_format is not None):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        wall_start = time.perf_counter()
        done = self.finished()
        if done is not None:
            self.say(done)
            return self.summary(0.0)
        for epoch in range(state.epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            train_loss, train_error, n_seen = self.train_epoch(epoch)
            train_wall = time.perf_counter() - t0
            ev = lambda split: evaluate(self.learner, self.net, split, self.preprocess, cfg.train.eval_batch_size, self.ctx)
            val_error = ev(self.val_split) if len(self.val_split) else math.nan
            test_error = ev(self.test_split)
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            if self.scheduler is not None and epoch < (cfg.train.cosine_epochs or cfg.train.epochs):
                self.scheduler.step()
            line = {
                "epoch": epoch + 1,
                "train_error": train_error,
                "train_loss": train_loss,
                "val_error": val_error,
                "test_error": test_error,
                "wall_s": time.perf_counter() - t0,
                "samples_per_s": n_seen / train_wall,
                "lrs": lrs,
            }
            if not self.net.symmetric:
                line["weight_angles_deg"] = weight_angles_deg(self.net)
            epoch_metrics = getattr(self.learner, "epoch_metrics", None)
            if epoch_metrics is not None and self.ctx.is_main:  # learner diagnostics (DTP's angles to BP)
                line.update(epoch_metrics(self.net, *self.diagnostic_batch()))
            state.epoch = epoch + 1
            state.history.append(line)
            warnings = self.learning_warnings(line)
            if warnings:
                line["warnings"] = warnings
                state.warnings.extend(warnings)
            improved = not (val_error >= state.best_val)  # NaN val (val_size = 0) selects the last epoch
            if improved:
                state.best_val, state.best_epoch, state.best_test = val_error, epoch + 1, test_error
            self.save(epoch, line, improved)
            self.say(
                f"epoch {epoch + 1:3d}/{cfg.train.epochs}  train {100 * train_error:6.2f} %  val {100 * val_error:6.2f} %  "
                f"test {100 * test_error:6.2f} %  {line['wall_s']:7.1f} s  {line['samples_per_s']:8.0f} samples/s"
            )
            for w in warnings:
                self.say(f"warning: {w}")
            stale = state.epoch - state.best_epoch  # epochs since the best validation error
            if cfg.train.patience and stale >= cfg.train.patience:
                self.say(f"early stop: no better validation error for {stale} epochs")
                break
        return self.summary(time.perf_counter() - wall_start)

    def summary(self, wall_s: float) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        summary = {
            "run": str(self.run.root),
            "algorithm": cfg.learner.algorithm,
            "estimator": cfg.learner.estimator if cfg.learner.algorithm in ("ep", "cep", "cvf") else None,
            "epochs": state.epoch,
            "best_epoch": state.best_epoch,
            "val_error": state.best_val,
            "test_error": state.best_test,
            "final": state.history[-1] if state.history else None,
            "warnings": list(state.warnings),
            "wall_s_this_session": wall_s,
            "wall_s_total": sum(h["wall_s"] for h in state.history),
            "device": str(self.device),
            "update": self.update_kind(),
            "dtype": cfg.dtype,
            "world_size": self.ctx.world_size,
            "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "neurohw": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.ctx.is_main:
            write_text(self.run.summary, json.dumps(summary, indent=2) + "\n")
        return summary


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
    trainer = Trainer(
        cfg, out, resume=resume, overwrite=overwrite, data_dir=data_dir, splits=splits, progress=progress, log=log,
        notes=notes, use_program=use_program,
    )
    return trainer.fit()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
