"""In-situ C-EP on crossbars of pulsed devices (docs/math.md eq. insitu): `neurohw insitu CARD`.

The network lives on the devices: each dense layer is a `PulsedArray` whose stored weights the
analog dynamics read (eq. analog). Per batch: the free phase settles; then T_nudge nudged intervals
of `interval_steps` integration steps each; after interval k the local C-EP update of every layer,

    ΔW = (η/(βB)) Σ_b (s'_{k+1} s_{k+1}ᵀ − s'_k s_kᵀ),   Δb = (η/(βB)) Σ_b (s'_{k+1} − s'_k)

(s' post-synaptic, s pre-synaptic), is written to the devices as stochastic pulse trains, one vector
update per sample and term (aihwkit's scheme, ≤ desired_bl pulses per cross-point and update):
`write = "phase"` writes the two phase terms +s'_{k+1}s_{k+1}ᵀ and −s'_k s_kᵀ separately;
`write = "contrast"` forms the difference first, as Δs' s_{k+1}ᵀ + s'_k Δsᵀ (the same ΔW, far fewer
and balanced pulses; asymmetric devices show the difference). Biases are digital.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurohw.config import apply_overrides, build_dataclass, check_choice, check_positive, read_toml
from neurohw.config import doc_field as _f
from neurohw.data import DATASETS, load_splits
from neurohw.devices.pulse_kernels import outer_update
from neurohw.devices.pulsed import PulsedArray, PulsedDeviceConfig, UpdateConfig
from neurohw.errors import CheckpointError, ConfigError
from neurohw.io.atomic import atomic_path, write_text
from neurohw.substrates.analog import rng, twin
from neurohw.substrates.analog.irdrop import with_ir_drop
from neurohw.substrates.analog.model import ACTIVATION_IDS, Crossbars, PeripheralConfig, SubstrateConfig


RANDOM_SIGN_TAG = 0x5EED_5161  # the key coordinate of the random-sign draws (distinct from every pulse key)


@dataclass(frozen=True)
class InSituConfig:
    hidden: tuple[int, ...] = _f((100,), "hidden layer sizes (784-…-10)")
    activation: str = _f("sigmoid4", "activation ρ")
    nudge: str = _f("outside", "inside | outside (docs/math.md eq. dyn)")
    beta: float = _f(0.2, "nudging strength β")
    estimator: str = _f("one-sided", "one-sided (β each batch) | random-sign (±β, the sign drawn per batch; docs/math.md §EP)")
    T_nudge: int = _f(15, "nudged update intervals per sample")
    interval_steps: int = _f(2, "integration steps per nudged interval")
    lrs: tuple[float, ...] = _f((0.0056, 0.0028), "learning rate η per layer")
    write: str = _f("contrast", "phase | contrast (module doc)")
    epochs: int = _f(1, "training epochs")
    schedule: str = _f("none", "none (constant η) | cosine (η·½(1 + cos(π·epoch/epochs)) in epoch 0, 1, …)")
    batch_size: int = _f(20, "samples per batch")
    val_size: int = _f(5000, "validation samples held out of the training set")
    limit_train: int = _f(0, "first N training samples only (0: all)")
    limit_eval: int = _f(0, "first N validation/test samples only (0: all)")
    init_gain: float = _f(1.0, "factor on PyTorch's default initialisation")
    weight_scaling_omega: float = _f(0.0, "map each layer's initial max|W| to omega·w_max of the devices, reading "
                                     "through a digital output scale α (aihwkit's weight_scaling_omega; 0: α = 1)")
    seed: int = _f(0, "seed of initialisation, shuffling and device-to-device draws")
    pulse_seed: int = _f(0, "seed of the pulse trains and cycle-to-cycle noise")

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATION_IDS:
            raise ConfigError(f"insitu.activation = '{self.activation}' has no analog kernel; valid: {', '.join(ACTIVATION_IDS)}")
        check_choice("insitu.nudge", self.nudge, ("inside", "outside"))
        check_choice("insitu.schedule", self.schedule, ("none", "cosine"))
        check_choice("insitu.write", self.write, ("phase", "contrast"))
        check_choice("insitu.estimator", self.estimator, ("one-sided", "random-sign"))
        for key in ("beta", "T_nudge", "interval_steps", "epochs", "batch_size"):
            check_positive(f"insitu.{key}", getattr(self, key))
        if not 0.0 <= self.weight_scaling_omega <= 1.0:
            raise ConfigError(f"insitu.weight_scaling_omega must lie in [0, 1] (0: no scaling), got {self.weight_scaling_omega}")
        if len(self.lrs) not in (1, len(self.hidden) + 1):
            raise ConfigError(f"insitu.lrs needs 1 or {len(self.hidden) + 1} values, got {len(self.lrs)}")


@dataclass(frozen=True)
class InSituScenario:
    substrate: SubstrateConfig = field(default_factory=lambda: SubstrateConfig(dt_s=5e-7, t_max_s=3e-5, settle_tol=1e-4))
    peripherals: PeripheralConfig = field(default_factory=PeripheralConfig)
    pulsed: PulsedDeviceConfig = field(default_factory=PulsedDeviceConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    insitu: InSituConfig = field(default_factory=InSituConfig)


def load_insitu(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                pulsed: str | Path | None = None) -> InSituScenario:
    """An in-situ card; `pulsed` (a sims/devices/*.toml) replaces its [pulsed] table."""
    table = read_toml(path, "in-situ card") if path is not None else {}
    if pulsed is not None:
        device = read_toml(pulsed, "device card")
        if "pulsed" not in device:
            raise ConfigError(f"device card '{pulsed}' has no [pulsed] table")
        table["pulsed"] = device["pulsed"]
    try:
        return build_dataclass(InSituScenario, apply_overrides(table, list(overrides), InSituScenario))
    except ConfigError as e:
        raise ConfigError(f"{e}{f' in {path!r}' if path else ''}") from None


class InSituNet:
    """A dense net whose weights are pulsed devices; biases digital."""

    def __init__(self, sc: InSituScenario, n_in: int, n_out: int):
        from neurohw.config import NetConfig
        from neurohw.nets.build import build_net

        cfg = sc.insitu
        gen = torch.Generator().manual_seed(cfg.seed)
        net = build_net(NetConfig(hidden=cfg.hidden, activation=cfg.activation, nudge=cfg.nudge, init_gains=(cfg.init_gain,)),
                        (1, 1, n_in), n_out, generator=gen)
        rng = np.random.default_rng(cfg.seed)
        self.arrays, self.alpha = [], []
        for layer in net.layers:
            a = PulsedArray(sc.pulsed, tuple(layer.weight.shape), rng)
            w0 = layer.weight.detach().double().numpy()
            # eq. insitu-scale: W = α·W_dev, the initial max|W| at ω·w_max of the devices
            omega = cfg.weight_scaling_omega
            alpha = float(np.abs(w0).max()) / (omega * sc.pulsed.w_max) if omega > 0 else 1.0
            a.set_weights(w0 / alpha)
            self.arrays.append(a)
            self.alpha.append(alpha)
        self.biases = [layer.bias.detach().double().numpy().copy() for layer in net.layers]
        self.act_id = ACTIVATION_IDS[cfg.activation]
        self.nudge_outside = cfg.nudge == "outside"
        self.activation = cfg.activation
        self.ir_drop = sc.peripherals.ir_drop

    def crossbars(self) -> Crossbars:
        """The arrays as the dynamics read them (with IR drop when the card sets peripherals.ir_drop;
        pulsed devices span ±w_max symmetrically: γ = 0)."""
        w = [a.read_weights() for a in self.arrays]
        cb = Crossbars(w, w, self.biases, [float(np.abs(m).max(initial=0.0)) for m in w], None, None, 0.0,
                       [m.shape[0] for m in w], list(self.alpha), 1.0, self.act_id, self.nudge_outside)
        return with_ir_drop(cb, self.ir_drop, 0.0)  # cb itself when ir_drop = 0


class InSituTrainer:
    def __init__(self, sc: InSituScenario, out: str | Path, data_dir=None, splits=None, log=print):
        from neurohw.config import DataConfig

        self.sc, self.out, self.log = sc, Path(out), log or (lambda _: None)
        cfg = sc.insitu
        if splits is None:
            splits = load_splits(DataConfig(val_size=cfg.val_size, limit_train=cfg.limit_train, limit_eval=cfg.limit_eval), data_dir)
        else:
            from neurohw.data import limit_splits

            splits = limit_splits(splits, cfg.limit_train, cfg.limit_eval)
        self.splits = splits
        self.info = DATASETS["mnist"]
        self.net = InSituNet(sc, int(np.prod(self.info.input_shape)), self.info.n_classes)
        n = len(self.net.arrays)
        self.lrs = list(cfg.lrs) * n if len(cfg.lrs) == 1 else list(cfg.lrs)
        self.counter = 0
        self.pulses = 0
        self.lr_scale = 1.0

    def schedule(self, epoch: int) -> float:
        """The factor on every η in epoch `epoch` (0-based)."""
        cfg = self.sc.insitu
        if cfg.schedule == "none":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))

    def _x(self, images) -> np.ndarray:
        return images.numpy().reshape(len(images), -1).astype(np.float64) / 255.0

    def _write(self, i: int, d: np.ndarray, x: np.ndarray, coeff: float) -> None:
        """W_i += coeff·Σ_b d_b x_bᵀ as pulses on W_dev = W_i/α_i (outer_update writes W − lr·d xᵀ)."""
        self.counter += 1
        self.pulses += outer_update(self.net.arrays[i], x, d, -coeff / self.net.alpha[i], self.sc.update,
                                    self.sc.insitu.pulse_seed, self.counter)

    def batch_beta(self) -> float:
        """β of the next batch: +β (one-sided) or ±β with the sign drawn from the counter-based
        generator at the current write counter (so a resumed run draws the same signs)."""
        cfg = self.sc.insitu
        if cfg.estimator == "one-sided":
            return cfg.beta
        u = float(rng.uniform(rng.key(cfg.pulse_seed, RANDOM_SIGN_TAG, self.counter)))
        return cfg.beta if u < 0.5 else -cfg.beta

    def train_batch(self, x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
        sc, cfg = self.sc, self.sc.insitu
        cb = self.net.crossbars()
        s, _, out = twin.relax(cb, sc.substrate, sc.peripherals, x, ids)
        loss = float(0.5 * ((out - y) ** 2).sum(1).mean())
        correct = int((out.argmax(1) == y.argmax(1)).sum())
        b = x.shape[0]
        beta = self.batch_beta()
        for k in range(cfg.T_nudge):
            s_next, _, _ = twin.relax(cb, sc.substrate, sc.peripherals, x, ids, s0=s, y=y, beta=beta,
                                      steps=cfg.interval_steps, phase=k + 1)
            pre, pre_n = [x, *s[:-1]], [x, *s_next[:-1]]
            for i in range(len(self.net.arrays)):
                coeff = self.lr_scale * self.lrs[i] / (beta * b)
                if cfg.write == "phase":
                    self._write(i, s_next[i], pre_n[i], coeff)
                    self._write(i, s[i], pre[i], -coeff)
                else:
                    self._write(i, s_next[i] - s[i], pre_n[i], coeff)
                    if i > 0:  # the input does not change: x has no Δ term
                        self._write(i, s[i], pre_n[i] - pre[i], coeff)
                self.net.biases[i] += coeff * (s_next[i] - s[i]).sum(0)
            cb = self.net.crossbars()
            s = s_next
        return loss, correct

    def error(self, split) -> float:
        from neurohw.substrates.analog import kernels

        x, labels = self._x(split.images), split.labels.numpy()
        cb = self.net.crossbars()
        wrong = 0
        for i in range(0, len(x), 1000):
            _, _, out = kernels.relax(cb, self.sc.substrate, self.sc.peripherals, x[i : i + 1000], np.arange(i, min(i + 1000, len(x))))
            wrong += int((out.argmax(1) != labels[i : i + 1000]).sum())
        return wrong / max(len(x), 1)

    def _scenario_for_resume(self) -> dict:
        """The scenario a checkpoint must match to be continued (any number of epochs may follow,
        unless the η schedule depends on it)."""
        d = {k: asdict(v) for k, v in vars(self.sc).items()}
        if self.sc.insitu.schedule == "none":
            d["insitu"].pop("epochs")
        return d

    def save(self, epoch: int, gen: torch.Generator, best: tuple, history: list) -> None:
        """checkpoint.pkl after `epoch` epochs: the devices (weights and device-to-device draws), the
        biases, the pulse counter and the shuffling generator, so that `fit(resume=True)` continues
        bit for bit (pulse trains and read noise are keyed by counters)."""
        state = {"epoch": epoch, "net": self.net, "counter": self.counter, "pulses": self.pulses,
                 "generator": gen.get_state(), "best": best, "history": history, "scenario": self._scenario_for_resume()}
        with atomic_path(self.out / "checkpoint.pkl") as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)

    def _load(self, gen: torch.Generator) -> tuple[int, tuple, list]:
        path = self.out / "checkpoint.pkl"
        try:
            with open(path, "rb") as f:
                state = pickle.load(f)
        except FileNotFoundError:
            raise CheckpointError(f"cannot resume: '{path}' does not exist") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise CheckpointError(f"cannot resume: '{path}' is damaged ({type(e).__name__}: {e})") from None
        ours = self._scenario_for_resume()
        # keys added to the scenario after the checkpoint was written count with their default value
        defaults = {k: asdict(v) for k, v in vars(InSituScenario()).items()}
        saved = lambda sec, k: state["scenario"].get(sec, {}).get(k, defaults[sec].get(k))
        diff = sorted(f"{sec}.{k}" for sec, t in ours.items() for k, v in t.items() if saved(sec, k) != v)
        if diff:
            raise CheckpointError(f"cannot resume '{path}': the scenario differs in {', '.join(diff)}")
        self.net, self.counter, self.pulses = state["net"], state["counter"], state["pulses"]
        self.net.ir_drop = self.sc.peripherals.ir_drop  # attributes newer than the checkpoint
        if not hasattr(self.net, "alpha"):
            self.net.alpha = [1.0] * len(self.net.arrays)
        gen.set_state(state["generator"])
        return state["epoch"], tuple(state["best"]), list(state["history"])

    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.sc.insitu
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = self.out / "metrics.jsonl"
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        train = self.splits.train
        n_batches = len(train) // cfg.batch_size
        best = (math.inf, 0, math.nan)
        history = []
        start = 0
        if resume:
            start, best, history = self._load(gen)
        write_text(metrics, "".join(json.dumps(h) + "\n" for h in history))
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            self.lr_scale = self.schedule(epoch)
            perm = torch.randperm(len(train), generator=gen)[: n_batches * cfg.batch_size].view(n_batches, cfg.batch_size)
            loss_sum, correct = 0.0, 0
            for bi in range(n_batches):
                idx = perm[bi]
                x = self._x(train.images[idx])
                y = np.eye(self.info.n_classes)[train.labels[idx].numpy()]
                ids = (epoch * len(train) + bi * cfg.batch_size + np.arange(cfg.batch_size)).astype(np.int64)
                l, c = self.train_batch(x, y, ids)
                loss_sum += l * cfg.batch_size
                correct += c
            n_seen = n_batches * cfg.batch_size
            train_wall = time.perf_counter() - t0
            val, test = self.error(self.splits.val), self.error(self.splits.test)
            line = {"epoch": epoch + 1, "train_error": 1 - correct / n_seen, "train_loss": loss_sum / n_seen,
                    "val_error": val, "test_error": test, "wall_s": time.perf_counter() - t0,
                    "samples_per_s": n_seen / train_wall, "pulses": self.pulses, "lr_scale": self.lr_scale}
            history.append(line)
            with open(metrics, "a") as f:
                f.write(json.dumps(line) + "\n")
            if val < best[0]:
                best = (val, epoch + 1, test)
            self.save(epoch + 1, gen, best, history)
            self.log(f"epoch {epoch + 1}/{cfg.epochs}  train {100 * line['train_error']:.2f} %  val {100 * val:.2f} %  "
                     f"test {100 * test:.2f} %  {line['wall_s']:.0f} s  {self.pulses} pulses")
        summary = {"val_error": best[0], "best_epoch": best[1], "test_error": best[2], "epochs": cfg.epochs,
                   "wall_s_total": sum(h["wall_s"] for h in history), "pulses": self.pulses,
                   "scenario": {k: asdict(v) for k, v in vars(self.sc).items()},
                   "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
