"""Train many networks at once: populations of one architecture, and `neurohw sweep` (docs/math.md eq.
population).

A population is K members — networks of one architecture and learner — whose parameters are stacked
along a leading member axis and trained as one program: the update of one network (a learner's `update`,
the one closed-form step of nets/layered.py) runs under torch.func.vmap over the members, so each matrix
product of a step is one batched product of the K members. Every member keeps what makes it a run of its
own: its seeds (initial weights, data order, augmentation, the sign of a random-sign β), its β, learning
rates, momentum and weight decay, its schedule and patience, and its standard run directory (a
`train.Trainer` holds its state: `neurohw export` works on any member, and the member's checkpoint is
that of a single run). Member k trains as the single-network run with member k's config, to float64
round-off (tests/unit/test_population.py). Members must share everything but `MEMBER_KEYS` (`program_key`);
`sweep` groups the members of a grid into programs automatically. A member whose weights or loss become
non-finite is stopped and reported by name; the others go on. One batch of all members reads only device
tensors (`_program`, `_batch`), so on CUDA it is captured once as a CUDA graph and replayed.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from neurohw.config import RunConfig, load_config, to_dict
from neurohw.data import AugmentDraw, augment, limit_splits, load_splits, one_hot
from neurohw.errors import ConfigError
from neurohw.io.atomic import atomic_path, write_text
from neurohw.learning.base import free_phase
from neurohw.program import capture_graph, draw_epoch, sgd_update
from neurohw.runs import learning_warnings, progress_bar

POPULATION_LEARNERS = ("ep", "cep", "cvf")
# what the members of one program may each have their own value of; everything else they share
MEMBER_KEYS = (
    "train.seed", "learner.seed", "learner.beta", "train.lrs", "train.momentum", "train.weight_decay",
    "train.lr_min", "train.patience", "learner.psi_deg",
)


def program_key(cfg: RunConfig) -> str:
    """What the members of one program share: the config without MEMBER_KEYS and [reference]."""
    d = to_dict(cfg)
    d.pop("reference", None)
    for key in MEMBER_KEYS:
        section, name = key.split(".")
        d[section].pop(name, None)
    return json.dumps(d, sort_keys=True)


class _NoChecks:
    """The non-finite checks of a member's phases are made after the batch, on the stacked weights
    and losses (a check inside vmap would read a batched value on the host)."""

    def record(self, name: str, state) -> None:
        pass


@dataclass
class Member:
    name: str  # its overrides, e.g. "learner.beta=0.2 train.seed=1"
    cfg: RunConfig
    out: Path
    overrides: list[str] = field(default_factory=list)
    status: str = "pending"


class Population:
    """K members trained as one program (module doc). `members[k].out` is member k's run directory."""

    def __init__(self, members: list[Member], *, splits=None, data_dir=None, resume: bool | list[bool] = False,
                 overwrite: bool = False, progress: bool = True, log: Callable[[str], None] | None = print):
        from neurohw.train import Trainer

        if not members:
            raise ConfigError("a population needs at least one member")
        key0 = program_key(members[0].cfg)
        for m in members[1:]:
            if program_key(m.cfg) != key0:
                a, b = to_dict(members[0].cfg), to_dict(m.cfg)
                diff = [f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s]
                        if f"{s}.{k}" not in MEMBER_KEYS and s != "reference" and a[s][k] != b[s][k]]
                diff += [k for k in a if not isinstance(a[k], dict) and a[k] != b[k]]
                raise ConfigError(
                    f"members '{members[0].name}' and '{m.name}' differ in {', '.join(diff)}: the members of one program "
                    f"share everything but {', '.join(MEMBER_KEYS)} (neurohw sweep groups them into programs)"
                )
        cfg = members[0].cfg
        if cfg.learner.algorithm not in POPULATION_LEARNERS:
            raise ConfigError(f"learner.algorithm = '{cfg.learner.algorithm}' has no population program (only "
                              f"{', '.join(POPULATION_LEARNERS)}); train its members one after another")
        if cfg.train.optimizer != "sgd":
            raise ConfigError(f"train.optimizer = '{cfg.train.optimizer}': a population steps SGD only")
        self.members, self.log = members, log or (lambda _: None)
        self.progress = progress
        if splits is None:
            splits = load_splits(cfg.data, data_dir)
        splits = limit_splits(splits, cfg.data.limit_train, cfg.data.limit_eval)
        resumes = resume if isinstance(resume, list) else [resume] * len(members)
        self.trainers = [
            Trainer(m.cfg, m.out, resume=r, overwrite=overwrite, data_dir=data_dir, splits=splits, progress=False,
                    log=self._member_log(m), distributed=False)
            for m, r in zip(members, resumes)
        ]
        t0 = self.trainers[0]
        self.net, self.learner, self.device, self.dtype = t0.net, t0.learner, t0.device, t0.dtype
        for p in self.net.parameters():
            p.requires_grad_(False)  # the template: its tensors are replaced by the members' (functional_call)
        self.names = [n for n, _ in self.net.named_parameters()]
        by_id = {id(p): n for n, p in self.net.named_parameters()}
        self.order = [by_id[id(p)] for p in self.net.param_list()]  # names in param_list order
        self.group_of = {}
        for g, group in enumerate(t0.optimizer.param_groups):
            for p in group["params"]:
                self.group_of[by_id[id(p)]] = g
        self.n_groups = len(t0.optimizer.param_groups)
        self.params = {n: torch.stack([dict(t.net.named_parameters())[n].detach() for t in self.trainers]) for n in self.names}
        self.momentum = any(t.cfg.train.momentum for t in self.trainers)
        self.bufs = None
        if self.momentum:
            self.bufs = {}
            for n in self.names:
                per = []
                for t in self.trainers:
                    p = dict(t.net.named_parameters())[n]
                    buf = t.optimizer.state.get(p, {}).get("momentum_buffer")
                    per.append(torch.zeros_like(p) if buf is None else buf.detach().clone())
                self.bufs[n] = torch.stack(per)
        self.active = [t.run.finished() is None for t in self.trainers]
        for m, t, a in zip(members, self.trainers, self.active):
            m.status = "running" if a else "complete"
        self.continual = cfg.learner.algorithm in ("cep", "cvf")
        self._vpredict = torch.func.vmap(self._member_predict, in_dims=(0, None))
        self._static: dict[str, Any] | None = None  # the device tensors of one batch (`_program`)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._capture_failed = False
        for t in self.trainers:
            t.program = None  # a member's update runs in the population's program

    def _member_log(self, m: Member) -> Callable[[str], None]:
        return lambda text: self.log(f"[{m.name}] {text}")

    # --------------------------------------------------------------------------- the program
    def _member_update(self, params, bufs, x, y, sign, beta, neg_lrs, wd, mom, factors) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of one member (vmapped over the members): the learner's update of the template net
        with this member's parameters, β, sign, learning rates, decay and momentum."""
        step = {"k": 0}

        def apply() -> None:
            k = step["k"]
            for n, p in zip(self.order, self.net.param_list()):
                g = self.group_of[n]
                buf = bufs[n] if bufs is not None else None
                if factors is not None:  # eq. C-EP-decay: this member's per-step decay
                    sgd_update(p, p.grad, buf, neg_lrs[g], weight_decay=wd[g], momentum=mom, factor=factors[g, k])
                else:
                    sgd_update(p, p.grad, buf, neg_lrs[g], weight_decay=wd[g] if wd is not None else 0.0, momentum=mom)
            step["k"] = k + 1

        with self._member(params):
            stats = self.learner.update(self.net, x, y, sign, apply, flags=_NoChecks(), beta=beta)
        return stats["loss"], stats["correct"]

    def _member_predict(self, params, x):
        with self._member(params):
            _, s = free_phase(self.net, x, self.learner.T_eval or self.learner.T_free, order=self.learner.relaxation,
                              flags=_NoChecks(), operands=self.learner.operands)
            return self.net.output(s)

    @contextlib.contextmanager
    def _member(self, params: dict[str, torch.Tensor]):
        """The template net with one member's tensors in place of its parameters (what
        torch.func.functional_call does for a module's forward)."""
        owners = {n: self._owner(n) for n in params}
        saved = {n: m._parameters[a] for n, (m, a) in owners.items()}
        for n, (m, a) in owners.items():
            m._parameters[a] = params[n]
        try:
            yield
        finally:
            for n, (m, a) in owners.items():
                m._parameters[a] = saved[n]

    def _owner(self, name: str):
        *path, attr = name.split(".")
        module = self.net
        for part in path:
            module = getattr(module, part)
        return module, attr

    # ------------------------------------------------------------------------------ per epoch
    def _scalars(self) -> dict[str, torch.Tensor]:
        """The members' own scalars of this epoch, stacked: β, −η per group, weight decay, momentum, and
        C-EP's per-step decay and gradient factors (eq. C-EP-decay)."""
        kw = dict(device=self.device, dtype=self.dtype)
        lrs = [[float(g["lr"]) for g in t.optimizer.param_groups] for t in self.trainers]
        out = {
            "beta": torch.tensor([t.cfg.learner.beta for t in self.trainers], **kw),
            "neg_lrs": -torch.tensor(lrs, **kw),
            "mom": torch.tensor([t.cfg.train.momentum for t in self.trainers], **kw),
        }
        T = self.learner.n_updates if self.continual else 0
        wd = [t.cfg.train.weight_decay for t in self.trainers]
        if self.continual and any(wd):
            decay, factors = [], []
            for lam, row in zip(wd, lrs):
                a = [(1.0 - lr * lam) ** (1.0 / T) for lr in row]
                for i, (lr, ai) in enumerate(zip(row, a)):
                    if lr * lam >= 1.0:
                        raise ConfigError(f"train.weight_decay = {lam} with the learning rate {lr} of layer {i}: η·λ ≥ 1")
                decay.append([(1.0 - ai) / lr if lr > 0.0 else 0.0 for lr, ai in zip(row, a)])
                factors.append([[ai ** -(T - 1 - k) for k in range(T)] for ai in a])
            out["wd"], out["factors"] = torch.tensor(decay, **kw), torch.tensor(factors, **kw)
        else:
            out["wd"] = torch.tensor([[w] * self.n_groups for w in wd], **kw) if any(wd) else None
            out["factors"] = None
        return out

    def train_epoch(self, epoch: int, active: list[bool]) -> list[tuple[float, float, int] | None]:
        """One epoch of the members in `active` together; (loss, error, samples) per member (None for the
        others, whose weights, generators and samplers are left untouched)."""
        cfg = self.trainers[0].cfg
        B, split = cfg.train.batch_size, self.trainers[0].train_split
        n_batches = self.trainers[0]._n_batches()
        padding = cfg.data.crop_padding if cfg.data.augment else None
        K = len(self.trainers)
        orders, signs, draws = [], [], []
        for t, a in zip(self.trainers, active):
            if a:  # each member draws its epoch as its own single run would
                tables = draw_epoch(len(split), n_batches, B, t.shuffle_gen, t.augment_gen, padding, t.learner.sampler)
            else:
                tables = draw_epoch(len(split), n_batches, B, torch.Generator(), torch.Generator(), padding, None)
            orders.append(tables.order)
            signs.append(tables.signs if tables.signs is not None else torch.ones(n_batches))
            draws.append(tables.draws)
        sc = self._scalars()
        mask = torch.tensor(active, device=self.device)
        sc["neg_lrs"] = torch.where(mask.view(K, 1), sc["neg_lrs"], torch.zeros_like(sc["neg_lrs"]))  # inactive: frozen
        st = self._program(n_batches, B, padding, sc)
        pin = self.device.type == "cuda"
        put = lambda dst, src: dst.copy_(src.pin_memory() if pin else src, non_blocking=pin)
        put(st["order"], torch.stack(orders))  # (K, n_batches, B)
        put(st["sign"], torch.stack(signs).to(self.dtype))  # (K, n_batches)
        if padding is not None:
            for f in ("flip", "top", "left"):
                put(st["draws"][f], torch.stack([getattr(d, f) for d in draws]))
        for key, value in sc.items():
            if value is not None:
                st["scalars"][key].copy_(value)
        for key in ("counter", "loss_sum", "correct"):
            st[key].zero_()
        self._maybe_capture(st)
        bar = progress_bar(n_batches, f"epoch {epoch + 1}/{cfg.train.epochs} ({K} members)", self.progress)
        for _ in range(n_batches):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._batch()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        n_seen = n_batches * B
        losses, rights = (st["loss_sum"] / n_seen).tolist(), st["correct"].tolist()
        return [(l, 1.0 - r / n_seen, n_seen) if a else None for l, r, a in zip(losses, rights, active)]

    # --------------------------------------------------------------------- the static program
    def _program(self, n_batches: int, B: int, padding: int | None, sc: dict[str, torch.Tensor | None]) -> dict[str, Any]:
        """The device tensors one batch reads (allocated once: a captured graph keeps their addresses):
        the epoch's sample order, β signs and augmentation draws per member, the members' scalars, the
        batch counter and the statistics. A batch reads nothing back to the host."""
        if self._static is None:
            K, dev = len(self.trainers), self.device
            self._static = {
                "order": torch.zeros(K, n_batches, B, dtype=torch.int64, device=dev),
                "sign": torch.ones(K, n_batches, dtype=self.dtype, device=dev),
                "draws": None if padding is None else {
                    f: torch.zeros(K, n_batches, B, dtype=t, device=dev)
                    for f, t in (("flip", torch.bool), ("top", torch.int64), ("left", torch.int64))},
                "scalars": {k: v.clone() if v is not None else None for k, v in sc.items()},
                "counter": torch.zeros((), dtype=torch.int64, device=dev),
                "loss_sum": torch.zeros(K, dtype=torch.float64, device=dev),
                "correct": torch.zeros(K, dtype=torch.int64, device=dev),
            }
            dims = tuple(None if v is None else 0 for v in (self.params, self.bufs, 0, 0, 0, 0, 0, sc["wd"], 0, sc["factors"]))
            self._vupdate = torch.func.vmap(self._member_update, in_dims=dims)
        return self._static

    @torch.no_grad()
    def _batch(self) -> None:
        """One batch of every member, from the device tensors of `_program` (the counter's batch)."""
        st, t0 = self._static, self.trainers[0]
        cfg, split = t0.cfg, t0.train_split
        K, B = st["order"].shape[0], st["order"].shape[2]
        b = st["counter"].view(1)
        idx = st["order"].index_select(1, b).reshape(-1)  # (K·B,), member by member
        x4 = t0.preprocess.float_images(split.images.index_select(0, idx))
        if st["draws"] is not None:
            d = AugmentDraw(*(st["draws"][f].index_select(1, b).reshape(-1) for f in ("flip", "top", "left")))
            x4 = augment(x4, cfg.data.crop_padding, d)
        x = x4.reshape(K, B, *self.net.input_shape)
        y = one_hot(split.labels.index_select(0, idx), t0.info.n_classes, self.dtype).view(K, B, -1)
        sign = st["sign"].index_select(1, b).view(K)
        sc = st["scalars"]
        loss, right = self._vupdate(self.params, self.bufs, x, y, sign, sc["beta"], sc["neg_lrs"], sc["wd"], sc["mom"],
                                    sc["factors"])
        st["loss_sum"].add_(loss.to(torch.float64) * B)
        st["correct"].add_(right)
        st["counter"].add_(1)

    def _mutable(self) -> list[torch.Tensor]:
        st = self._static
        bufs = list(self.bufs.values()) if self.bufs is not None else []
        return [*self.params.values(), *bufs, st["counter"], st["loss_sum"], st["correct"]]

    def _maybe_capture(self, st: dict[str, Any]) -> None:
        """On CUDA (train.cuda_graphs auto or true) record one batch as a CUDA graph, once: warm-up runs
        on a side stream whose effects are undone, then the capture; `auto` falls back to eager batches
        with one warning if the capture fails, `true` raises."""
        mode = self.trainers[0].cfg.train.cuda_graphs
        if self.graph is not None or self.device.type != "cuda" or mode == "false" or self._capture_failed:
            return
        snap = [t.clone() for t in self._mutable()]
        try:
            self.graph = capture_graph(self._batch, self._mutable(), self.device)
        except Exception as e:  # noqa: BLE001 — any failure of capture falls back (or is the error under `true`)
            for t, v in zip(self._mutable(), snap):
                t.copy_(v)
            if mode == "true":
                raise ConfigError(f"train.cuda_graphs = true: capture of the population's update failed: {type(e).__name__}: {e}") from None
            self._capture_failed = True
            self.log(f"warning: train.cuda_graphs = auto: capture of the population's update failed ({type(e).__name__}: "
                     f"{e}); its batches run eagerly")

    def errors(self, split_name: str) -> list[float]:
        """Each member's error rate on the validation or test split (the same images for every member)."""
        t0 = self.trainers[0]
        split = t0.val_split if split_name == "val" else t0.test_split
        n = len(split)
        if not n:
            return [math.nan] * len(self.trainers)
        wrong = torch.zeros(len(self.trainers), dtype=torch.int64, device=self.device)
        step = t0.cfg.train.eval_batch_size
        with torch.no_grad():
            for start in range(0, n, step):
                images, labels = split.images[start : start + step], split.labels[start : start + step]
                out = self._vpredict(self.params, t0.preprocess(images))  # (K, b, classes)
                wrong += (out.argmax(2) != labels.view(1, -1)).sum(1)
        return [w / n for w in wrong.tolist()]

    def finite(self) -> list[bool]:
        """Whether each member's weights are all finite (one host read)."""
        total = sum(t.reshape(t.shape[0], -1).sum(1) for t in self.params.values())
        return torch.isfinite(total).tolist()

    def _export_member(self, k: int) -> None:
        """Member k's slice of the stacked state into its Trainer (net and momentum buffers)."""
        t = self.trainers[k]
        with torch.no_grad():
            for n, p in t.net.named_parameters():
                p.copy_(self.params[n][k])
                if self.bufs is not None and t.cfg.train.momentum:
                    t.optimizer.state[p]["momentum_buffer"] = self.bufs[n][k].clone()

    # ------------------------------------------------------------------------------- the loop
    def fit(self) -> list[dict[str, Any]]:
        """Train every member to the end of its schedule; each one's summary (also its summary.json)."""
        for t in self.trainers:
            t.run.start()
        walls = [0.0] * len(self.trainers)
        epochs = self.trainers[0].cfg.train.epochs
        while any(self.active):
            epoch = min(t.state.epoch for t, a in zip(self.trainers, self.active) if a)
            now = [a and t.state.epoch == epoch for t, a in zip(self.trainers, self.active)]
            t0 = time.perf_counter()
            results = self.train_epoch(epoch, now)
            train_wall = time.perf_counter() - t0
            ok = self.finite()
            val, test = self.errors("val"), self.errors("test")
            for k, (t, m) in enumerate(zip(self.trainers, self.members)):
                if not now[k]:
                    continue
                if not ok[k] or not math.isfinite(results[k][0]):
                    self.active[k], m.status = False, f"diverged in epoch {epoch + 1}"
                    self.log(f"[{m.name}] diverged in epoch {epoch + 1} (non-finite weights or loss): stopped; the other "
                             "members go on (lower its learning rates or β)")
                    continue
                self._export_member(k)
                source = _MemberSource(t, val[k], test[k])
                warn = lambda line, earlier, t=t: learning_warnings(line, earlier, t.majority, t.cfg.train.lrs)
                stop = t.run.close_epoch(source, epoch, results[k], t0, train_wall, warn)
                walls[k] += train_wall
                if stop:
                    self.active[k], m.status = False, f"stopped early after epoch {epoch + 1} (train.patience)"
                elif t.state.epoch >= epochs:
                    self.active[k], m.status = False, "complete"
        summaries = []
        for k, (t, m) in enumerate(zip(self.trainers, self.members)):
            update = "population (cuda graph)" if self.graph is not None else "population"
            s = t.run.summary(walls[k], {**t.summary_extras(), "update": update, "members": len(self.members), "status": m.status})
            summaries.append(s)
        return summaries


class _MemberSource:
    """A member's side of `Run.close_epoch`: its Trainer (net already holding the member's weights), with
    the errors the population measured."""

    def __init__(self, trainer, val: float, test: float):
        self.t, self.val, self.test = trainer, val, test

    def error(self, split: str) -> float:
        return self.val if split == "val" else self.test

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        return self.t.epoch_metrics(epoch)

    def end_epoch(self, epoch: int) -> None:
        # torch's LR schedulers check that the optimizer stepped before them: the population stepped it
        self.t.optimizer._opt_called = True
        self.t.end_epoch(epoch)

    def checkpoint_state(self) -> dict[str, Any]:
        return self.t.checkpoint_state()

    def best_state(self) -> dict[str, Any]:
        return self.t.best_state()


# ------------------------------------------------------------------------------------ sweeps
SEED_KEYS = ("train.seed", "learner.seed")


def split_values(text: str) -> list[str]:
    """'0,1,2' → ['0', '1', '2']; commas inside brackets or quotes do not split ('[0.08,0.04],[0.04,0.02]')."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    if depth or quote or any(not v.strip() for v in out):
        raise ConfigError(f"sweep values '{text}' are not a comma-separated list of TOML values (e.g. 0.1,0.2 or [1,2],[3,4])")
    return [v.strip() for v in out]


def grid(items: list[str]) -> tuple[list[str], list[list[str]]]:
    """(the overrides every member shares — items with one value —, the Cartesian product of the items
    with several values, one override list per member, in order). `seed=v1,v2,…` sets `train.seed` and
    `learner.seed` together (initial weights, data order and the learner's draws of one seed)."""
    fixed, axes = [], []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"sweep item '{item}' is not of the form key=v1,v2,… (e.g. seed=0,1,2)")
        key, values = (part.strip() for part in item.split("=", 1))
        keys = SEED_KEYS if key == "seed" else (key,)  # seed=N: the run's and the learner's seed together
        choices = [[f"{k}={v}" for k in keys] for v in split_values(values)]
        if len(choices) == 1:
            fixed += choices[0]
        else:
            axes.append(choices)
    return fixed, [[o for choice in combo for o in choice] for combo in itertools.product(*axes)]


def member_dir(k: int, overrides: list[str]) -> str:
    """A member's folder name: its index and overrides, made file-system safe."""
    safe = "_".join(o.replace("/", "-").replace(" ", "") for o in overrides) or "base"
    return f"m{k:03d}_" + "".join(c if c.isalnum() or c in "._=-,[]" else "-" for c in safe)[:120]



def sweep(
    card: str | Path, items: list[str], out: str | Path, *, fixed: list[str] | tuple[str, ...] = (), members_per_program: int = 0,
    resume: bool = False, overwrite: bool = False, data_dir=None, splits=None, progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Train the grid of `items` over `card` (+ `fixed` overrides) into `out`: members/<member>/ (standard
    run directories), sweep.csv, summary.md (grouped over seeds) and curves.png. Members are grouped into
    programs by what they must share (`program_key`), `members_per_program` at most (0: all); BPTT, BP and
    DTP members train one after another. Under torchrun each rank trains its share of the members and rank 0
    writes the tables once every rank is done."""
    import os

    import torch.distributed as dist

    log = log or (lambda _: None)
    out = Path(out)
    if resume:
        check_recorded(out, card, items, members_per_program)
    shared, combos = grid(items)
    members = []
    for k, combo in enumerate(combos):
        overrides = [*fixed, *shared, *combo]
        try:
            cfg = load_config(card, overrides)
        except ConfigError as e:
            raise ConfigError(f"sweep member {' '.join(combo) or '(the card)'}: {e}") from None
        members.append(Member(" ".join(combo) or "base", cfg, out / "members" / member_dir(k, combo), combo))
    if not resume and (out / "sweep.csv").exists() and not overwrite:
        raise ConfigError(f"'{out}' already holds a sweep (sweep.csv): pass --resume to continue it, --overwrite to replace it")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    if overwrite and not resume and rank == 0:  # replace the sweep: its own files only
        import shutil

        shutil.rmtree(out / "members", ignore_errors=True)
        for name in ("sweep.csv", "summary.md", "curves.png"):
            (out / name).unlink(missing_ok=True)
    if rank == 0 and not resume:
        out.mkdir(parents=True, exist_ok=True)
        record = {"card": str(Path(card).resolve()), "items": list(items), "members_per_program": members_per_program,
                  "fixed": list(fixed)}
        write_text(out / SWEEP_RECORD, json.dumps(record, indent=1) + "\n")
    if world > 1:
        dist.barrier()
    mine = members[rank::world]
    if splits is None and mine:
        splits = load_splits(mine[0].cfg.data, data_dir)
    groups: dict[str, list[Member]] = {}
    for m in mine:
        groups.setdefault(program_key(m.cfg), []).append(m)
    size = members_per_program or len(mine) or 1
    for group in groups.values():
        algo = group[0].cfg.learner.algorithm
        for i in range(0, len(group), size):
            chunk = group[i : i + size]
            if algo in POPULATION_LEARNERS and group[0].cfg.train.optimizer == "sgd":
                log(f"program of {len(chunk)} member{'s' if len(chunk) != 1 else ''}: {', '.join(m.name for m in chunk)}")
                started = [resume and (m.out / "config.toml").exists() for m in chunk]  # the others start now
                Population(chunk, splits=splits, data_dir=data_dir, resume=started, overwrite=overwrite, progress=progress,
                           log=log).fit()
            else:
                from neurohw.train import train

                log(f"learner.algorithm = '{algo}' (or a non-SGD optimizer) has no population program: its "
                    f"{len(chunk)} members train one after another")
                for m in chunk:
                    if resume and (m.out / "summary.json").exists() and not (m.out / "checkpoint.pt").exists():
                        continue
                    summary = train(m.cfg, m.out, resume=resume and (m.out / "config.toml").exists(), overwrite=overwrite,
                                    data_dir=data_dir, splits=splits, progress=progress,
                                    log=lambda t, m=m: log(f"[{m.name}] {t}"))
                    m.status = "complete" if summary["epochs"] >= m.cfg.train.epochs else "stopped early (train.patience)"
    if world > 1:
        dist.barrier()
    rows = []
    if rank == 0:
        rows = write_tables(members, out)
    if world > 1:
        dist.barrier()
    return rows


SWEEP_RECORD = "sweep.json"  # the card and grid of a sweep, for --resume


def recorded(out: str | Path) -> dict[str, Any]:
    """The card, grid and members per program a sweep in `out` was started with."""
    path = Path(out) / SWEEP_RECORD
    if not path.exists():
        raise ConfigError(f"'{out}' holds no sweep to resume (no {SWEEP_RECORD}): start it without --resume")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"'{path}' is not valid JSON ({e}): the sweep's record is damaged") from None


def check_recorded(out: Path, card, items, members_per_program: int) -> None:
    """--resume continues the sweep it names: the same card, grid and members per program."""
    rec = recorded(out)
    given = {"card": str(Path(card).resolve()), "items": list(items), "members_per_program": members_per_program}
    for key, value in given.items():
        if rec.get(key) != value:
            raise ConfigError(f"--resume of '{out}': {key} {value!r} differs from the sweep's {rec.get(key)!r} "
                              f"({out / SWEEP_RECORD}); pass the same, or only --resume --out {out}")


def _summary_of(m: Member) -> dict[str, Any]:
    path = m.out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


STABLE_VAL_PT = 0.003  # a stable run ends within 0.3 pt of its best validation error …
STABLE_LOSS_RISE = 2.0  # … and its training loss never rises above 2× its minimum after reaching it


def stability(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether a run's epochs (metrics.jsonl lines) are stable: its last validation error within
    STABLE_VAL_PT of its best, and no training loss after the minimum above STABLE_LOSS_RISE × that
    minimum (the criterion of the C-VF collapse study, docs/results.md §10); the figures it is made of."""
    if not history:
        return {"final_val_error": "", "train_loss_min": "", "train_loss_peak_after_min": "", "stable": ""}
    val = [h["val_error"] for h in history]
    loss = [h["train_loss"] for h in history]
    k = min(range(len(loss)), key=lambda i: loss[i] if math.isfinite(loss[i]) else math.inf)
    peak = max(loss[k:], key=lambda v: v if math.isfinite(v) else math.inf)
    finite = all(math.isfinite(v) for v in val + loss)
    stable = finite and val[-1] - min(val) <= STABLE_VAL_PT + 1e-12 and peak <= STABLE_LOSS_RISE * loss[k]
    return {"final_val_error": val[-1], "train_loss_min": loss[k], "train_loss_peak_after_min": peak, "stable": stable}


def _history(m: Member) -> list[dict[str, Any]]:
    path = m.out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_tables(members: list[Member], out: Path) -> list[dict[str, Any]]:
    """sweep.csv (a row per member), summary.md (mean ± std over the seeds of each setting) and
    curves.png (the validation error per epoch, mean over seeds, per setting)."""
    history = {id(m): _history(m) for m in members}  # each member's metrics.jsonl, read once
    stable = {id(m): stability(history[id(m)]) for m in members}
    rows = []
    for m in members:
        s = _summary_of(m)
        status = s.get("status") or ("complete" if s else "not run")
        rows.append({
            "member": m.name, "dir": str(m.out.relative_to(out)), "status": status, "epochs": s.get("epochs", 0),
            "best_epoch": s.get("best_epoch", ""), "val_error": s.get("val_error", ""), "test_error": s.get("test_error", ""),
            **stable[id(m)], **{o.split("=", 1)[0]: o.split("=", 1)[1] for o in m.overrides},
        })
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out / "sweep.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    settings: dict[str, list[Member]] = {}
    for m in members:
        setting = " ".join(o for o in m.overrides if o.split("=", 1)[0] not in SEED_KEYS) or "(the card)"
        settings.setdefault(setting, []).append(m)
    lines = ["| setting | n | validation error (mean ± std) | test error (mean ± std) | final validation error (mean) | stable | "
             "members not complete |", "|---|---|---|---|---|---|---|"]
    curves = {}
    for setting, ms in settings.items():
        done = [(_summary_of(m), m) for m in ms]
        ok = [s for s, m in done if s and s.get("status", "complete") == "complete" or (s and "stopped early" in s.get("status", ""))]
        val = [s["val_error"] for s in ok if isinstance(s.get("val_error"), float) and math.isfinite(s["val_error"])]
        test = [s["test_error"] for s in ok if isinstance(s.get("test_error"), float) and math.isfinite(s["test_error"])]
        fmt = lambda v: f"{100 * statistics.mean(v):.2f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0.0):.2f} %" if v else "—"
        bad = [f"{m.name}: {s.get('status', 'not run') if s else 'not run'}" for s, m in done if s not in ok]
        st = [stable[id(m)] for s, m in done if s in ok]
        final = [x["final_val_error"] for x in st if isinstance(x["final_val_error"], float)]
        final_txt = f"{100 * statistics.mean(final):.2f} %" if final else "—"
        lines.append(f"| {setting} | {len(val)} | {fmt(val)} | {fmt(test)} | {final_txt} | {sum(x['stable'] is True for x in st)} of "
                     f"{len(st)} | {'; '.join(bad) or '—'} |")
        histories = [[h["val_error"] for h in history[id(m)]] for m in ms]
        histories = [h for h in histories if h]
        if histories:
            n = min(len(h) for h in histories)
            curves[setting] = [statistics.mean(h[e] for h in histories) for e in range(n)]
    note = (f"\nStable: the last validation error within {100 * STABLE_VAL_PT:.1f} pt of the best and the training loss never "
            f"above {STABLE_LOSS_RISE:g}× its minimum after reaching it.\n")
    write_text(out / "summary.md", "# Sweep: test error at the epoch of lowest validation error, over seeds\n\n" + "\n".join(lines) + "\n" + note)
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for setting, c in curves.items():
            ax.plot(range(1, len(c) + 1), [100 * v for v in c], marker="o", label=setting)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation error (%), mean over seeds")
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(out / "curves.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    return rows
