"""In-situ training: the network lives on crossbars of pulsed devices (docs/math.md eq. insitu).

An in-situ card is a model card (`[data]`, `[net]`, `[learner]`, `[train]`, as for `neurohw train`) with
the hardware tables `[substrate]`, `[peripherals]`, `[pulsed]`, `[update]` and `[insitu]` (how updates
are written); `neurohw train sims/insitu_*.toml` (or `neurohw insitu …`) runs it through the same run
plumbing as any card (neurohw/runs.py: run directory, resume, selection on validation, summary). Each
dense layer is a `PulsedArray` whose stored weights the analog dynamics read (eq. analog); the learner
is C-EP written as pulses (`learning/pulsed_cep.py`); biases are digital. Evaluation runs the numba
kernels. The learning rate of epoch e follows train.scheduler in closed form (cosine: lr_min + (η −
lr_min)·½(1 + cos(π·min(e, S)/S)), S the span), there being no optimizer.

Seeding is that of the in-situ trainer before this format (8e027bf): the initial weights from
`train.seed` (as `neurohw train` draws them), the device-to-device variation from a numpy generator
seeded with `train.seed`, the batch order from `train.seed + 1`, pulse trains and β's random sign from
counters keyed by `insitu.pulse_seed`; a card converted key by key gives the same numbers bit for bit
(tests/unit/test_insitu.py against tests/data/golden_insitu_8e027bf.pt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurohw.config import RunConfig, check_choice, to_dict, to_toml
from neurohw.core.activations import form
from neurohw.config import doc_field as _f
from neurohw.data import limit_splits, load_splits
from neurohw.devices.pulsed import PulsedArray, PulsedDeviceConfig, UpdateConfig
from neurohw.errors import CheckpointError, ConfigError
from neurohw.learning.pulsed_cep import WRITES, PulsedCEP
from neurohw.runs import Run, learning_warnings, majority_error, progress_bar
from neurohw.substrates.analog.irdrop import with_ir_drop
from neurohw.substrates.analog.model import ACTIVATION_IDS, Crossbars, PeripheralConfig, SubstrateConfig

# the state of a PulsedArray that a checkpoint keeps (weights and device-to-device draws)
ARRAY_STATE = ("b_max", "b_min", "step_up", "step_down", "gamma_up", "gamma_down", "stuck", "w", "write_noise")


@dataclass(frozen=True)
class InSituSection:
    interval_steps: int = _f(2, "integration steps per nudged interval (an update is written after each)")
    write: str = _f("contrast", "phase | contrast: how a C-EP update becomes pulses (learning/pulsed_cep.py)")
    weight_scaling_omega: float = _f(0.0, "map each layer's initial max|W| to omega·w_max of the devices, reading "
                                     "through a digital output scale α (aihwkit's weight_scaling_omega; 0: α = 1)")
    pulse_seed: int = _f(0, "seed of the pulse trains, the cycle-to-cycle noise and the sign of a random-sign β")

    def __post_init__(self) -> None:
        check_choice("insitu.write", self.write, WRITES)
        if self.interval_steps < 1:
            raise ConfigError(f"insitu.interval_steps must be ≥ 1, got {self.interval_steps}")
        if not 0.0 <= self.weight_scaling_omega <= 1.0:
            raise ConfigError(f"insitu.weight_scaling_omega must lie in [0, 1] (0: no scaling), got {self.weight_scaling_omega}")


@dataclass(frozen=True)
class InSituRunConfig(RunConfig):
    """A model card plus the hardware it is trained on (module doc)."""

    substrate: SubstrateConfig = field(default_factory=lambda: SubstrateConfig(dt_s=5e-7, t_max_s=3e-5, settle_tol=1e-4))
    peripherals: PeripheralConfig = field(default_factory=PeripheralConfig)
    pulsed: PulsedDeviceConfig = field(default_factory=PulsedDeviceConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    insitu: InSituSection = field(default_factory=InSituSection)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.learner.algorithm != "cep":
            raise ConfigError(f"learner.algorithm = '{self.learner.algorithm}': in-situ training runs C-EP on the devices (cep)")
        if self.net.architecture != "fc" or self.net.cost != "mse":
            raise ConfigError("in-situ training needs a dense net with the output inside the dynamics (net.architecture "
                              f"= 'fc', net.cost = 'mse'), got '{self.net.architecture}', '{self.net.cost}'")
        form(self.net.activation, "kernel", "net.activation")  # the analog kernels must run it
        if self.device not in ("auto", "cpu"):
            raise ConfigError(f"device = '{self.device}': in-situ training runs on the CPU (numpy and numba kernels)")


# what an in-situ card does not use (config.key_usage adds these for cards with a [pulsed] table)
INSITU_UNUSED = {
    "learner.T_free": "the analog free phase settles (substrate.t_max_s, settle_tol)",
    "learner.T_eval": "the analog free phase settles (substrate.t_max_s, settle_tol)",
    "learner.relaxation": "the analog dynamics integrate all layers at once",
    "train.optimizer": "updates are pulses, not an optimizer's step",
    "train.momentum": "updates are pulses, not an optimizer's step",
    "train.weight_decay": "updates are pulses, not an optimizer's step",
    "train.precision": "the devices are simulated in float64",
    "train.compile": "the devices are simulated by numpy and numba",
    "train.cuda_graphs": "in-situ training runs on the CPU",
    "data.augment": "in-situ training reads the images as they are",
}


class InSituNet:
    """A dense net whose weights are pulsed devices; biases digital."""

    def __init__(self, cfg: InSituRunConfig, n_in: int, n_out: int):
        from neurohw.nets.build import build_net

        gen = torch.Generator().manual_seed(cfg.train.seed)
        net = build_net(cfg.net, (1, 1, n_in), n_out, generator=gen)
        draws = np.random.default_rng(cfg.train.seed)
        self.arrays, self.alpha = [], []
        omega = cfg.insitu.weight_scaling_omega
        for layer in net.layers:
            a = PulsedArray(cfg.pulsed, tuple(layer.weight.shape), draws)
            w0 = layer.weight.detach().double().numpy()
            # eq. insitu-scale: W = α·W_dev, the initial max|W| at ω·w_max of the devices
            alpha = float(np.abs(w0).max()) / (omega * cfg.pulsed.w_max) if omega > 0 else 1.0
            a.set_weights(w0 / alpha)
            self.arrays.append(a)
            self.alpha.append(alpha)
        self.biases = [layer.bias.detach().double().numpy().copy() for layer in net.layers]
        self.act_id = ACTIVATION_IDS[cfg.net.activation]
        self.nudge_outside = cfg.net.nudge == "outside"
        self.ir_drop = cfg.peripherals.ir_drop

    def crossbars(self) -> Crossbars:
        """The arrays as the dynamics read them (with IR drop when the card sets peripherals.ir_drop;
        pulsed devices span ±w_max symmetrically: γ = 0)."""
        w = [a.read_weights() for a in self.arrays]
        cb = Crossbars(w, w, self.biases, [float(np.abs(m).max(initial=0.0)) for m in w], None, None, 0.0,
                       [m.shape[0] for m in w], list(self.alpha), 1.0, self.act_id, self.nudge_outside)
        return with_ir_drop(cb, self.ir_drop, 0.0)  # cb itself when ir_drop = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "arrays": [{k: torch.from_numpy(np.ascontiguousarray(getattr(a, k))) for k in ARRAY_STATE} for a in self.arrays],
            "biases": [torch.from_numpy(b.copy()) for b in self.biases],
            "alpha": list(self.alpha),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for a, sd in zip(self.arrays, state["arrays"]):
            for k in ARRAY_STATE:
                setattr(a, k, sd[k].numpy().copy())
        self.biases = [b.numpy().copy() for b in state["biases"]]
        self.alpha = list(state["alpha"])

    def effective_state_dict(self) -> dict[str, torch.Tensor]:
        """The logical weights α·W_dev (as read) and biases in `LayeredNet`'s layout: what best.pt keeps,
        so that `neurohw export` works on an in-situ run as on any other."""
        out = {}
        for i, (a, alpha, b) in enumerate(zip(self.arrays, self.alpha, self.biases)):
            out[f"layers.{i}.weight"] = torch.from_numpy(alpha * np.asarray(a.read_weights(), dtype=np.float64))
            out[f"layers.{i}.bias"] = torch.from_numpy(b.copy())
        return out


class InSituTrainer:
    """In-situ training of an `InSituRunConfig` into a run directory (the EpochSource of `Run`)."""

    def __init__(self, cfg: InSituRunConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 data_dir=None, splits=None, progress: bool = True, log=print, notes=()):
        self.cfg = cfg
        old = Path(out) / "checkpoint.pkl"
        if resume and old.exists() and not (Path(out) / "checkpoint.pt").exists():
            raise CheckpointError(
                f"'{old}' is a checkpoint of the in-situ trainer before the run plumbing (a pickle, neurohw ≤ 8e027bf): "
                "this version cannot resume it; start a new run (in-situ cards are now model cards with hardware tables: "
                "sims/insitu_constantstep.toml)"
            )
        self.say = log if log is not None else (lambda _: None)
        self.progress = progress
        self.run = Run(out, to_dict(cfg), to_toml(cfg), epochs=cfg.train.epochs, patience=cfg.train.patience,
                       resume=resume, overwrite=overwrite, say=log, notes=notes, keys=("insitu_net", "generators"))
        if splits is None:
            splits = load_splits(cfg.data, data_dir)
        else:  # given splits (tests, notebooks) obey the same limits as loaded ones
            splits = limit_splits(splits, cfg.data.limit_train, cfg.data.limit_eval)
        self.splits, self.info = splits, splits.info
        self.run.set_data(self.info.fingerprint(), self.info.preprocessing())
        self.net = InSituNet(cfg, int(np.prod(self.info.input_shape)), self.info.n_classes)
        n = len(self.net.arrays)
        lrs = cfg.train.lrs
        if len(lrs) not in (1, n):
            raise ConfigError(f"train.lrs has {len(lrs)} values but the net has {n} layers (give 1 or {n})")
        self.lrs0 = list(lrs) * n if len(lrs) == 1 else list(lrs)
        self.learner = PulsedCEP(cfg.learner.beta, cfg.learner.T_nudge, cfg.learner.estimator,
                                 interval_steps=cfg.insitu.interval_steps, write=cfg.insitu.write,
                                 pulse_seed=cfg.insitu.pulse_seed, update_cfg=cfg.update, substrate=cfg.substrate,
                                 peripherals=cfg.peripherals)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.lrs = list(self.lrs0)
        self.majority = {name: majority_error(getattr(splits, name).labels, self.info.n_classes) for name in ("train", "val")}
        ck = self.run.load()
        if ck is not None:
            self.load_checkpoint_state(ck)

    @property
    def state(self):
        return self.run.state

    @property
    def pulses(self) -> int:
        return self.learner.pulses

    def schedule(self, epoch: int) -> float:
        """The factor on every learning rate in epoch `epoch` (0-based; module doc), with lr_min = 0."""
        t = self.cfg.train
        if t.scheduler == "none":
            return 1.0
        span = t.cosine_epochs or t.epochs
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, span) / span))

    def lrs_of(self, epoch: int) -> list[float]:
        t = self.cfg.train
        scale = self.schedule(epoch)
        if t.scheduler == "none" or t.lr_min == 0.0:
            return [scale * lr for lr in self.lrs0]
        return [t.lr_min + (lr - t.lr_min) * scale for lr in self.lrs0]

    def inputs(self, images: torch.Tensor) -> np.ndarray:
        """The network input of a batch of images: (x/scale − mean)/std per channel (docs/math.md eq.
        input; MNIST: pixel/255 exactly), flattened, float64 (the devices' dtype)."""
        info = self.info
        c = images.shape[1]
        x = images.numpy().reshape(len(images), c, -1).astype(np.float64) / info.scale
        mean = np.asarray(info.mean, dtype=np.float64).reshape(1, c, 1)
        std = np.asarray(info.std, dtype=np.float64).reshape(1, c, 1)
        return ((x - mean) / std).reshape(len(images), -1)

    def train_batch(self, x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
        return self.learner.step(self.net, x, y, ids, self.lrs)

    # ------------------------------------------------------------------- the EpochSource of Run
    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        train, B = self.splits.train, self.cfg.train.batch_size
        n_batches = len(train) // B
        if n_batches == 0:
            raise ConfigError(f"train.batch_size = {B} exceeds the {len(train)} training samples")
        self.lrs = self.lrs_of(epoch)
        perm = torch.randperm(len(train), generator=self.shuffle_gen)[: n_batches * B].view(n_batches, B)
        loss_sum, correct = 0.0, 0
        bar = progress_bar(n_batches, f"epoch {epoch + 1}/{self.cfg.train.epochs}", self.progress)
        for bi in range(n_batches):
            idx = perm[bi]
            x = self.inputs(train.images[idx])
            y = np.eye(self.info.n_classes)[train.labels[idx].numpy()]
            ids = (epoch * len(train) + bi * B + np.arange(B)).astype(np.int64)
            loss, right = self.train_batch(x, y, ids)
            loss_sum += loss * B
            correct += right
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        n_seen = n_batches * B
        return loss_sum / n_seen, 1 - correct / n_seen, n_seen

    def error(self, split: str) -> float:
        from neurohw.substrates.analog import kernels

        data = getattr(self.splits, split)
        if not len(data):
            return math.nan
        x, labels = self.inputs(data.images), data.labels.numpy()
        cb, step, wrong = self.net.crossbars(), self.cfg.train.eval_batch_size, 0
        for i in range(0, len(x), step):
            _, _, out = kernels.relax(cb, self.cfg.substrate, self.cfg.peripherals, x[i : i + step], np.arange(i, min(i + step, len(x))))
            wrong += int((out.argmax(1) != labels[i : i + step]).sum())
        return wrong / len(x)

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        return {"lrs": list(self.lrs), "pulses": self.learner.pulses}

    def end_epoch(self, epoch: int) -> None:
        pass

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "insitu_net": self.net.state_dict(),
            "counters": {"write": self.learner.counter, "pulses": self.learner.pulses},
            "generators": {"shuffle": self.shuffle_gen.get_state()},
        }

    def load_checkpoint_state(self, ck: dict[str, Any]) -> None:
        self.net.load_state_dict(ck["insitu_net"])
        self.learner.counter, self.learner.pulses = int(ck["counters"]["write"]), int(ck["counters"]["pulses"])
        self.shuffle_gen.set_state(ck["generators"]["shuffle"].cpu())

    def best_state(self) -> dict[str, Any]:
        return {"net": self.net.effective_state_dict()}

    def summary_extras(self) -> dict[str, Any]:
        return {"algorithm": "cep", "mode": "insitu", "estimator": self.cfg.learner.estimator, "device": "cpu",
                "update": "pulses", "pulses": self.learner.pulses}

    def fit(self) -> dict[str, Any]:
        self.run.start()
        warn = lambda line, earlier: learning_warnings(line, earlier, self.majority, self.cfg.train.lrs)
        wall = self.run.fit(self, warn)
        return self.run.summary(wall, self.summary_extras())
