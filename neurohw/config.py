"""Run configuration: frozen dataclasses loaded from TOML model cards plus `key=value` overrides.

A card (models/*.toml) has the sections `[data]`, `[net]`, `[learner]`, `[train]`, an optional
`[reference]` (the published figure the card reproduces) and the top-level keys `device` and `dtype`.
Overrides use dotted keys: `train.epochs=1 net.hidden=[512,512] device=cpu`; values are TOML values,
and a bare word is read as a string. Every field is documented below (`describe()` prints them).
Unknown keys and wrongly typed values raise ConfigError naming the key and the closest valid name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurohw.choices import (
    ALGORITHMS, CUDA_GRAPHS, DATASETS, DTYPES, ESTIMATORS, FB_POOL_INDICES, OPTIMIZERS, PRECISIONS, SCHEDULERS, VF_RULES,
)
from neurohw.core.registry import did_you_mean
from neurohw.errors import ConfigError
from neurohw.spec import ARCHITECTURES, COSTS, NUDGES, POOLS, RELAXATIONS


def doc_field(default: Any, doc: str) -> Any:
    """A dataclass field with its help text (shown by `neurohw keys`); lists become tuples."""
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


_f = doc_field  # the short name of the config dataclasses below


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """ConfigError naming `key` unless `value` is one of `choices` (with a did-you-mean)."""
    if value not in choices:
        raise ConfigError(f"{key} = '{value}' is not valid{did_you_mean(value, list(choices))}; valid: {', '.join(choices)}")


def check_positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    """ConfigError naming `key` unless `value` is finite and > 0 (≥ 0 with zero_ok)."""
    if not (value >= 0 if zero_ok else value > 0) or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{key} must be {'≥ 0' if zero_ok else '> 0'}, got {value}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f(
        "mnist",
        "mnist | fashion_mnist | cifar10 | cifar100 | svhn | imagenet32 | arrays (your .npz or HDF5 file at data.path: "
        "x_train, y_train, x_test, y_test) | folder (your images at data.path: train/<class>/*.png, test/<class>/*.png)",
    )
    path: str = _f(
        "",
        "arrays: the .npz or HDF5 file; folder: the folder holding train/ and test/; a relative path resolves against "
        "the data directory, else the working directory",
    )
    image_size: tuple[int, ...] = _f((), "folder: [height, width] every image is resized to (bilinear; one value: square); () = their own size, one for all")
    val_size: int = _f(5000, "training samples held out for validation (model selection, early stopping)")
    split_seed: int = _f(0, "seed of the train/validation split")
    augment: bool = _f(False, "random crop (edge padding) and horizontal flip of training images")
    crop_padding: int = _f(4, "padding in pixels of the random crop")
    mean: tuple[float, ...] = _f(
        (),
        "per-channel mean of pixel/255 (uint8 images) or of the values (float arrays) subtracted from the input; () = "
        "the dataset's default (svhn, arrays, folder: computed on the training split)",
    )
    std: tuple[float, ...] = _f((), "per-channel std dividing the input; () = as data.mean")
    limit_train: int = _f(0, "use only the first N training samples (0 = all); for smoke tests")
    limit_eval: int = _f(0, "evaluate on the first N validation and test samples (0 = all); for smoke tests")

    def __post_init__(self) -> None:
        check_choice("data.dataset", self.dataset, DATASETS)
        if self.dataset in ("arrays", "folder") and not self.path:
            raise ConfigError(f"data.dataset = '{self.dataset}' needs data.path (the {'.npz or HDF5 file' if self.dataset == 'arrays' else 'folder of train/ and test/'})")
        if len(self.image_size) > 2:
            raise ConfigError(f"data.image_size takes [height, width] or one size, got {list(self.image_size)}")
        for s in self.image_size:
            check_positive("data.image_size", s)
        for key in ("val_size", "crop_padding", "limit_train", "limit_eval"):
            check_positive(f"data.{key}", getattr(self, key), zero_ok=True)
        if len(self.mean) != len(self.std):
            raise ConfigError(f"data.mean and data.std need the same length, got {len(self.mean)} and {len(self.std)}")
        for s in self.std:
            check_positive("data.std", s)


@dataclass(frozen=True)
class NetConfig:
    architecture: str = _f("fc", "fc (dense layers) | conv (conv layers, then dense layers)")
    hidden: tuple[int, ...] = _f((512,), "sizes of the dense hidden layers (after the conv layers for conv)")
    channels: tuple[int, ...] = _f((), "conv: output channels of each conv layer")
    kernel_sizes: tuple[int, ...] = _f((), "conv: kernel size of each conv layer")
    strides: tuple[int, ...] = _f((), "conv: stride of each conv layer (() = all 1)")
    paddings: tuple[int, ...] = _f((), "conv: zero padding of each conv layer (() = all 0)")
    pools: tuple[str, ...] = _f((), "conv: max2 | avg2 | none for each conv layer (() = all max2)")
    activation: str = _f("sigmoid4", "activation ρ (registry name: tanh, hard_sigmoid, hard_sigmoid_half, sigmoid4, identity, elu)")
    cost: str = _f("mse", "mse (output inside the dynamics) | ce_readout (softmax cross-entropy readout)")
    init_gains: tuple[float, ...] = _f((), "per-layer factor on PyTorch's default init (() = 1; one value broadcasts)")
    nudge: str = _f("inside", "inside: s_N = ρ(∂Φ^β/∂s_N) (canonical) | outside: s_N = ρ(∂Φ/∂s_N) − β∂ℓ/∂s_N (Ernoult et al.'s code)")

    def __post_init__(self) -> None:
        check_choice("net.architecture", self.architecture, ARCHITECTURES)
        check_choice("net.cost", self.cost, COSTS)
        check_choice("net.nudge", self.nudge, NUDGES)
        from neurohw.core.activations import ACTIVATIONS

        check_choice("net.activation", self.activation, tuple(ACTIVATIONS.names()))
        for h in self.hidden:
            check_positive("net.hidden", h)
        if self.architecture == "fc" and self.channels:
            raise ConfigError("net.channels is set but net.architecture = 'fc'; use architecture = 'conv'")
        if self.architecture == "conv":
            n = len(self.channels)
            if n == 0:
                raise ConfigError("net.architecture = 'conv' needs net.channels (one entry per conv layer)")
            for key in ("kernel_sizes", "strides", "paddings", "pools"):
                v = getattr(self, key)
                if (v or key == "kernel_sizes") and len(v) != n:
                    raise ConfigError(f"net.{key} needs {n} entries (one per conv layer), got {len(v)}")
            for p in self.pools:
                check_choice("net.pools", p, POOLS)


@dataclass(frozen=True)
class LearnerConfig:
    algorithm: str = _f("ep", "ep | cep | cvf | bptt | bp | dtp | drl | ldrl (DTP with the feedback loss of Lee 2015, Meulemans 2020, Ernoult 2022)")
    estimator: str = _f("one-sided", "EP gradient estimator: one-sided | random-sign | symmetric (cep/cvf: +β then −β phases, eq. C-EP-sym)")
    beta: float = _f(0.1, "nudging strength β (> 0); dtp/drl/ldrl: step of the first target t^N = s^N − β∇ℓ")
    T_free: int = _f(30, "steps of the free phase")
    T_nudge: int = _f(10, "steps of each nudged phase")
    T_eval: int = _f(0, "free-phase steps at evaluation (0 = T_free)")
    T_backprop: int = _f(0, "bptt: steps differentiated through, the last ones (0 = all T_free)")
    relaxation: str = _f(
        "sync",
        "ep/cep/cvf: sync (every layer from the previous state: the papers' dynamics) | async (even layers, then odd "
        "layers from their fresh neighbours; T_free/T_nudge/T_eval then count sweeps; same fixed point, eq. async)",
    )
    psi_deg: float = _f(0.0, "cvf: initial angle in degrees between forward and feedback weights")
    feedback_lr_ratio: float = _f(
        1.0,
        "cvf: r_b, the feedback weights' update as a fraction of the rule's: ΔW^b = r_b·(η/β)·s_{n+1} Δs_nᵀ "
        "(eq. C-VF; with SGD and no weight decay, a learning rate r_b·η for W^b); 0 keeps the feedback weights fixed",
    )
    vf_rule: str = _f("activity", "cvf: per-step update, activity (post-synaptic change × pre-synaptic activity, eq. C-VF; the authors' rule) | vector-field ((∂F/∂θ)ᵀ Δs: the change gated by ρ'(a), eq. C-VF-vf; neurohw's option)")
    seed: int = _f(0, "seed of the learner's own generator (sign of β for random-sign; DTP: feedback init and noise)")
    fb_iters: tuple[int, ...] = _f((20,), "dtp/drl/ldrl: feedback training iterations per batch, per feedback layer G_2…G_N (one value broadcasts)")
    fb_noise: tuple[float, ...] = _f((0.1,), "dtp/drl/ldrl: noise std σ of the feedback loss, per feedback layer (one value broadcasts)")
    fb_lrs: tuple[float, ...] = _f((1e-3,), "dtp/drl/ldrl: SGD learning rate of each feedback layer (one value broadcasts)")
    fb_momentum: float = _f(0.9, "dtp/drl/ldrl: SGD momentum of the feedback layers")
    fb_pool_indices: str = _f(
        "noisy",
        "ldrl/dtp on a net with a max2 conv layer: max-pool indices at which the feedback loss un-pools G(F(x+ε)), "
        "noisy (those of the noisy pass F(x+ε): the authors' feedback_loss.py; the clean pass's serve G(F(x)) and "
        "the η term) | clean (the clean pass's); drl always un-pools at the clean ones; docs/math.md eq. DTP-pool",
    )

    def __post_init__(self) -> None:
        check_choice("learner.algorithm", self.algorithm, ALGORITHMS)
        check_choice("learner.estimator", self.estimator, ESTIMATORS)
        check_choice("learner.vf_rule", self.vf_rule, VF_RULES)
        check_choice("learner.relaxation", self.relaxation, RELAXATIONS)
        check_positive("learner.beta", self.beta)
        if not (math.isfinite(self.feedback_lr_ratio) and self.feedback_lr_ratio >= 0.0):
            raise ConfigError(f"learner.feedback_lr_ratio must be a finite number ≥ 0, got {self.feedback_lr_ratio}")
        check_positive("learner.T_free", self.T_free)
        check_positive("learner.T_nudge", self.T_nudge)
        for key in ("T_eval", "T_backprop"):
            check_positive(f"learner.{key}", getattr(self, key), zero_ok=True)
        for key in ("fb_iters", "fb_noise", "fb_lrs"):
            if not getattr(self, key):
                raise ConfigError(f"learner.{key} needs at least one value")
        for k in self.fb_iters:
            check_positive("learner.fb_iters", k, zero_ok=True)
        for s in self.fb_noise:
            check_positive("learner.fb_noise", s)
        for lr in self.fb_lrs:
            check_positive("learner.fb_lrs", lr, zero_ok=True)
        if not 0.0 <= self.fb_momentum < 1.0:
            raise ConfigError(f"learner.fb_momentum must be in [0, 1), got {self.fb_momentum}")
        check_choice("learner.fb_pool_indices", self.fb_pool_indices, FB_POOL_INDICES)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(1, "training epochs")
    batch_size: int = _f(20, "global mini-batch size (split across processes in a distributed run)")
    eval_batch_size: int = _f(1000, "batch size of evaluation")
    optimizer: str = _f("sgd", "sgd | adam")
    lrs: tuple[float, ...] = _f((0.05,), "learning rate per layer, input → output (one value broadcasts)")
    momentum: float = _f(0.0, "sgd momentum (cep/cvf: the buffer runs through every nudged step, see docs/math.md eq. C-EP-opt)")
    weight_decay: float = _f(
        0.0,
        "L2 weight decay λ: every batch shrinks θ by the factor 1 − η·λ (cep/cvf: spread over the T_nudge per-step "
        "updates, each step's decay (1 − η·λ)^(1/T_nudge) and its gradient rescaled so that a batch decays as one EP "
        "step, eq. C-EP-decay)",
    )
    scheduler: str = _f("none", "none | cosine (annealing per epoch down to lr_min)")
    cosine_epochs: int = _f(0, "epochs of the cosine annealing, then constant lr_min (0 = epochs)")
    lr_min: float = _f(0.0, "learning rate at the end of the cosine schedule (every layer)")
    patience: int = _f(0, "stop after this many epochs without a better validation error (0 = never)")
    seed: int = _f(0, "seed of initialisation, shuffling and augmentation")
    precision: str = _f(
        "fp32",
        "ep/cep/cvf: operands of the dynamics' matrix products and convolutions: fp32 | tf32 (CUDA tensor cores) | bf16 "
        "(rounded operands, fp32 sums); states, state differences, parameters, optimizer and the ∂Φ/∂θ contrast stay "
        "fp32 (eq. precision)",
    )
    compile: bool = _f(
        False,
        "ep/cep/cvf with SGD: run the whole update through torch.compile (fused elementwise work; captured as a CUDA "
        "graph on CUDA); the first batch waits for the compilation (minutes)",
    )
    cuda_graphs: str = _f(
        "auto",
        "auto | true | false: capture the whole update of ep/cep/cvf with SGD as one CUDA graph, replayed per batch "
        "(auto: on CUDA where possible, else eager with one warning naming why; true: an error if it cannot)",
    )

    def __post_init__(self) -> None:
        check_positive("train.epochs", self.epochs)
        check_positive("train.batch_size", self.batch_size)
        check_positive("train.eval_batch_size", self.eval_batch_size)
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train.scheduler", self.scheduler, SCHEDULERS)
        check_choice("train.cuda_graphs", self.cuda_graphs, CUDA_GRAPHS)
        check_choice("train.precision", self.precision, PRECISIONS)
        if not self.lrs:
            raise ConfigError("train.lrs needs at least one learning rate")
        for lr in self.lrs:
            check_positive("train.lrs", lr, zero_ok=True)
        for key in ("momentum", "weight_decay", "lr_min", "cosine_epochs", "patience"):
            check_positive(f"train.{key}", getattr(self, key), zero_ok=True)


@dataclass(frozen=True)
class ReferenceConfig:
    paper: str = _f("", "the publication this card reproduces")
    published: str = _f("", "the published figure (value, table/figure, setting)")
    source: str = _f("", "where the card's hyper-parameters come from")
    ours: str = _f("", "our measured figure for this card: value, command, machine, date (docs/results.md)")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    device: str = _f("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    dtype: str = _f("float32", "float32 | float64")

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device = '{self.device}' is not valid; valid: auto, cpu, cuda, cuda:N")
        if self.learner.algorithm in CONTINUAL and self.train.optimizer != "sgd":
            raise ConfigError(
                f"train.optimizer = '{self.train.optimizer}' with learner.algorithm = '{self.learner.algorithm}': "
                "C-EP and C-VF step the optimizer at every nudged step, and Adam's moment estimates would then mix "
                "the steps of a phase and rescale each one (its update is no longer the local rule of eq. C-EP); "
                "use train.optimizer = 'sgd'"
            )


EP_FAMILY = ("ep", "cep", "cvf")  # learners that relax and nudge the recurrent dynamics
CONTINUAL = ("cep", "cvf")  # learners that step the optimizer at every nudged step
DTP_FAMILY = ("dtp", "drl", "ldrl")

INSITU_TABLES = ("pulsed", "update", "substrate", "peripherals", "insitu")  # the hardware tables of an in-situ card

SECTIONS = {"data": DataConfig, "net": NetConfig, "learner": LearnerConfig, "train": TrainConfig, "reference": ReferenceConfig}
TOP_LEVEL = ("device", "dtype")


def valid_keys(cls: type = None) -> list[str]:
    """Every dotted key of a config dataclass (default RunConfig), nested sections included."""
    cls = RunConfig if cls is None else cls
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in valid_keys(hints[f.name])]
        else:
            keys.append(f.name)
    return keys


def describe() -> str:
    """One line per config key: key, default and documentation."""
    lines = []
    for f in dataclasses.fields(RunConfig):
        if f.name in TOP_LEVEL:
            lines.append(f"{f.name:28s} = {_toml_value(f.default):14s} {f.metadata['doc']}")
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            lines.append(f"{name + '.' + f.name:28s} = {_toml_value(f.default):14s} {f.metadata['doc']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- coercion
def _coerce(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item, _) = typing.get_args(annotation)
        seq = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(key, v, item) for v in seq)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # `train.cuda_graphs = true`: a TOML boolean for a choice key
            return "true" if value else "false"
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls: type, table: dict[str, Any], prefix: str = "", all_keys: list[str] | None = None) -> Any:
    """An instance of the (frozen, typed) dataclass `cls` from a TOML table, every value checked."""
    all_keys = valid_keys(cls) if all_keys is None else all_keys
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'{did_you_mean(full, all_keys)}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"[{full}] must be a table (a section), got {value!r}")
            kwargs[key] = build_dataclass(hints[key], value, f"{full}.", all_keys)
        else:
            kwargs[key] = _coerce(full, value, hints[key])
    return cls(**kwargs)


def card_class(table: dict[str, Any]) -> type:
    """The config class of a card: RunConfig, or for a card with hardware tables ([pulsed], [update],
    [substrate], [peripherals], [insitu]) the in-situ run config (neurohw/substrates/analog/insitu.py)."""
    if any(k in table for k in INSITU_TABLES):
        from neurohw.substrates.analog.insitu import InSituRunConfig

        return InSituRunConfig
    return RunConfig


def from_dict(table: dict[str, Any], cls: type | None = None) -> RunConfig:
    return build_dataclass(cls or card_class(table), table)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.epochs=1' → (['train', 'epochs'], 1); the value is TOML, a bare word a string."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=1)")
    key, raw = (part.strip() for part in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(
    table: dict[str, Any], overrides: list[str], cls: type = None, keys: list[str] | None = None
) -> dict[str, Any]:
    """`table` (plain TOML data, not modified) with the `key=value` overrides applied; the valid
    keys are those of the dataclass `cls` (default RunConfig) unless given."""
    keys = valid_keys(cls) if keys is None else keys
    out = json.loads(json.dumps(table))  # deep copy
    for item in overrides:
        path, value = parse_override(item)
        full = ".".join(path)
        if full not in keys:
            raise ConfigError(f"unknown config key '{full}' in the override '{item}'{did_you_mean(full, keys)}")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The table of a TOML file; ConfigError names the file (`what`: "model card", "device profile")."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} '{path}' is not valid TOML: {e}") from None


# ------------------------------------------------------------------- keys a run does not use
def key_usage(cfg: RunConfig) -> dict[str, tuple[bool, str]]:
    """For every key that only some runs use: (whether `cfg` uses it, what uses it).

    `learner.seed` is not listed: one-sided EP, BPTT and BP draw nothing from it, but a seed sweep sets
    it for every member alike (the learners that draw random numbers take it: random-sign β, DTP).
    """
    a, arch = cfg.learner.algorithm, cfg.net.architecture
    ep, dtp = a in EP_FAMILY, a in DTP_FAMILY
    conv = (arch == "conv", "net.architecture = 'conv'")
    usage = {
        "learner.estimator": (ep, "the EP learners (learner.algorithm = ep, cep, cvf)"),
        "learner.beta": (ep or dtp, "the EP learners (ep, cep, cvf) and the DTP learners (dtp, drl, ldrl)"),
        "learner.T_free": (ep or a == "bptt", "the relaxing learners (ep, cep, cvf, bptt)"),
        "learner.T_nudge": (ep, "the EP learners (ep, cep, cvf)"),
        "learner.T_eval": (ep or a == "bptt", "the relaxing learners (ep, cep, cvf, bptt)"),
        "learner.T_backprop": (a == "bptt", "learner.algorithm = 'bptt'"),
        "learner.relaxation": (ep, "the EP learners (ep, cep, cvf)"),
        "train.precision": (ep, "the EP learners (ep, cep, cvf)"),
        "train.compile": (ep and cfg.train.optimizer == "sgd", "the EP learners (ep, cep, cvf) with train.optimizer = 'sgd'"),
        "learner.psi_deg": (a == "cvf", "learner.algorithm = 'cvf'"),
        "learner.vf_rule": (a == "cvf", "learner.algorithm = 'cvf'"),
        "learner.feedback_lr_ratio": (a == "cvf", "learner.algorithm = 'cvf'"),
        "net.nudge": (ep, "the nudged phases of the EP learners (ep, cep, cvf)"),
        "train.momentum": (cfg.train.optimizer == "sgd", "train.optimizer = 'sgd'"),
        "train.cosine_epochs": (cfg.train.scheduler == "cosine", "train.scheduler = 'cosine'"),
        "train.lr_min": (cfg.train.scheduler == "cosine", "train.scheduler = 'cosine'"),
        "data.crop_padding": (cfg.data.augment, "data.augment = true"),
        "data.path": (cfg.data.dataset in ("arrays", "folder"), "data.dataset = 'arrays' or 'folder'"),
        "data.image_size": (cfg.data.dataset == "folder", "data.dataset = 'folder'"),
    }
    for key in ("fb_iters", "fb_noise", "fb_lrs", "fb_momentum"):
        usage[f"learner.{key}"] = (dtp, "the DTP learners (learner.algorithm = dtp, drl, ldrl)")
    max_pool = arch == "conv" and (not cfg.net.pools or "max2" in cfg.net.pools)  # () = every conv layer max2
    usage["learner.fb_pool_indices"] = (
        a in ("dtp", "ldrl") and max_pool,
        "the DTP learners dtp and ldrl on a net with a max-pooled conv layer (net.pools with 'max2'; drl un-pools at the clean indices)",
    )
    for key in ("channels", "kernel_sizes", "strides", "paddings", "pools"):
        usage[f"net.{key}"] = conv
    if hasattr(cfg, "pulsed"):  # in-situ training (neurohw/substrates/analog/insitu.py)
        from neurohw.substrates.analog.insitu import INSITU_UNUSED

        for key, why in INSITU_UNUSED.items():
            usage[key] = (False, f"runs off the devices (in situ: {why})")
    return usage


def _value(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _default(cfg: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return type(getattr(cfg, section)).__dataclass_fields__[name].default


def _unused_message(cfg: RunConfig, key: str, used_by: str) -> str:
    return f"{key} = {_toml_value(_value(cfg, key))} is not used by this run: only {used_by} use{'s' if '=' in used_by else ''} it"


def check_unused(cfg: RunConfig, card_table: dict[str, Any], overrides: list[str], *, check_card: bool = True) -> list[str]:
    """Refuse (ConfigError) a key the run does not use when it was set on the command line, or set by
    the card to a non-default value that its own settings do not use; return one warning per card key
    that an override made unused (e.g. `learner.algorithm=bp` on an EP card: the card's nudge)."""
    usage = key_usage(cfg)
    given = {".".join(parse_override(o)[0]) for o in overrides}
    for key in sorted(given):
        if key in usage and not usage[key][0]:
            raise ConfigError(f"{_unused_message(cfg, key, usage[key][1])}; drop the override")
    if not check_card:
        return []
    try:
        own = key_usage(from_dict(card_table, type(cfg)))  # what the card's own settings use
    except ConfigError:
        own = {}
    notes = []
    for key, (used, used_by) in usage.items():
        section, name = key.split(".")
        if used or key in given or name not in card_table.get(section, {}) or _value(cfg, key) == _default(cfg, key):
            continue
        if own.get(key, (False, ""))[0]:
            notes.append(_unused_message(cfg, key, used_by) + " (the card sets it; the overrides made it unused)")
        else:
            raise ConfigError(f"{_unused_message(cfg, key, used_by)}; remove it from the card")
    return notes


def load_config(
    card: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    notes: list[str] | None = None,
    check_card: bool = True,
    tables: dict[str, Any] | None = None,
) -> RunConfig:
    """The RunConfig of a TOML card (or the defaults) with `key=value` overrides applied.

    A key the run does not use is refused (`check_unused`); the warnings about card keys that the
    overrides made unused are appended to `notes` when given. The card's own keys are not checked with
    `check_card=False` nor when the card is a run's resolved config.toml (it lists every key).
    """
    table = read_toml(card, "model card") if card is not None else {}
    table.update(tables or {})  # whole tables replaced (neurohw insitu --pulsed: a device card's [pulsed])
    cls = card_class(table)
    merged = apply_overrides(table, list(overrides), cls)  # an unknown override key is named as an override
    try:
        cfg = from_dict(merged, cls)
        resolved = all(table.get(name, {}).keys() >= sec.__dataclass_fields__.keys() for name, sec in _sections(cls))
        found = check_unused(cfg, table, list(overrides), check_card=check_card and not resolved)
    except ConfigError as e:
        where = "" if card is None else f" (card '{card}' with overrides)" if overrides else f" in '{card}'"
        raise ConfigError(f"{e}{where}") from None
    if notes is not None:
        notes.extend(found)
    return cfg


# ------------------------------------------------------------------------------- serialisation
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _sections(cls: type) -> list[tuple[str, type]]:
    """(name, class) of the fields of a config class that are tables (nested dataclasses), in order."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]


def to_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML; `load_config` of this text gives back an equal config."""
    d = to_dict(cfg)
    tables = [name for name, _ in _sections(type(cfg))]
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if k not in tables]
    for name in tables:
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in d[name].items()]
    return "\n".join(lines) + "\n"


def loads(text: str) -> RunConfig:
    return from_dict(tomllib.loads(text))
