"""The run directory and the epoch loop every training mode shares (`neurohw train`, in-situ training).

A run directory holds `config.toml` (the resolved config), `metrics.jsonl` (one line per epoch),
`checkpoint.pt` (the whole training state after the last finished epoch, written atomically),
`best.pt` (what the epoch with the lowest validation error left) and `summary.json` (the test error of
the epoch chosen on validation). `Run` owns those files and the loop around the epochs: set-up or
resume (the config compared with the checkpoint's, a schedule never silently stretched), the epoch
line, selection on the validation error only, patience, warnings that a run does not learn,
checkpoints and the summary. A training mode supplies the epochs through `EpochSource`.

Nothing is written before the set-up has succeeded (a config error leaves no folder behind), nothing
is replaced without `overwrite`, and a run that stopped before its first checkpoint is resumed from
scratch with its config.toml.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from neurohw.errors import CheckpointError
from neurohw.io.atomic import write_text, write_with

CHECKPOINT_FORMAT = "neurohw-checkpoint"
CHECKPOINT_VERSION = 1
# keys (or whole sections, by their prefix) that may differ between a checkpoint's config and the config it is
# resumed with (the span of a cosine schedule, cosine_epochs or epochs, must stay the same: `check_extension`);
# [reference] describes a run and changes nothing it computes: a card that got a new measured figure (`ours`)
# mid-run still resumes its runs and sweeps
RESUMABLE_CHANGES = {
    ("train", "epochs"), ("train", "cosine_epochs"), ("train", "patience"), ("train", "eval_batch_size"), ("device",),
    ("reference",),
}
# a run is said not to learn when an error is within this many points of the majority-class error, or
# when its training loss exceeds this factor times its lowest value so far (docs/results.md §1 shows
# healthy runs: their loss never rises above 1.5× its minimum before a collapse)
CHANCE_MARGIN = 0.10
LOSS_RISE_FACTOR = 2.0
UNSETTLED_FRACTION = 0.05  # warn when more of the diagnostic inputs than this have not settled (dynamics.settling)


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
class RunState:
    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    best_test: float = math.nan
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


STATE_KEYS = ("epoch", "best_val", "best_epoch", "best_test", "history", "warnings")


class EpochSource(Protocol):
    """What a training mode gives `Run.fit`."""

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """Train one epoch: (mean loss, error rate, samples seen)."""

    def error(self, split: str) -> float:
        """Error rate on "val" or "test" (NaN for an empty split)."""

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        """Extra entries of the epoch's metrics line (learning rates, diagnostics, pulses)."""

    def end_epoch(self, epoch: int) -> None:
        """After the epoch's metrics: advance schedules."""

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (tensors and plain containers only)."""

    def load_checkpoint_state(self, ck: dict[str, Any]) -> None: ...

    def best_state(self) -> dict[str, Any]:
        """What best.pt keeps of the best epoch (the net)."""

    def summary_extras(self) -> dict[str, Any]: ...


def config_diff(a: dict, b: dict, prefix: tuple = ()) -> list[str]:
    """The keys (dotted) that differ between two config dicts, except RESUMABLE_CHANGES (and the keys under them)."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = (*prefix, k)
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, key)
        elif va != vb and not any(key[: len(r)] == r for r in RESUMABLE_CHANGES):
            out.append(f"{'.'.join(key)}: checkpoint {va!r}, now {vb!r}")
    return out


def check_extension(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse a resume whose train.epochs / cosine_epochs would change the learning-rate schedule of
    the epochs already trained, or extend a cosine schedule that ended at learning rate 0.

    The cosine schedule anneals from train.lrs to train.lr_min over its span S = cosine_epochs (0:
    epochs), then stays at lr_min. Extending a run keeps S (pass train.cosine_epochs = S when S came
    from train.epochs); the extra epochs then train at lr_min, which must be > 0.
    """
    t_old, t_new = old["train"], new["train"]
    if t_new["scheduler"] != "cosine":
        return
    span_old = t_old["cosine_epochs"] or t_old["epochs"]
    span_new = t_new["cosine_epochs"] or t_new["epochs"]
    if span_new != span_old:
        how = f"train.cosine_epochs = {t_old['cosine_epochs']}" if t_old["cosine_epochs"] else \
            f"train.cosine_epochs = 0, so it spans train.epochs = {t_old['epochs']}"
        raise CheckpointError(
            f"--resume with train.epochs = {t_new['epochs']}, train.cosine_epochs = {t_new['cosine_epochs']}: the run's "
            f"cosine schedule anneals over {span_old} epochs ({how}); a span of {span_new} epochs would change the "
            f"learning rates of the epochs already trained. To train on after the annealing at the constant "
            f"train.lr_min, add train.cosine_epochs={span_old}; to anneal over {t_new['epochs']} epochs, start a new run"
        )
    if t_new["epochs"] > span_old and t_new["lr_min"] == 0.0:
        raise CheckpointError(
            f"--resume with train.epochs = {t_new['epochs']}: the run's cosine schedule ends at epoch {span_old} with "
            f"train.lr_min = 0, so epochs {span_old + 1}…{t_new['epochs']} would train at learning rate 0 and change "
            f"nothing; start a new run with train.epochs = {t_new['epochs']} instead"
        )


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu", keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint written by `Run`; CheckpointError names the file if it is missing, corrupt or lacks
    one of `keys` (the message never suggests loading a file of unknown origin unsafely)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # not torch's message: it advises weights_only=False, unsafe for a file of unknown origin
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a neurohw checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a neurohw checkpoint (no format = '{CHECKPOINT_FORMAT}')")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint '{path}' has version {ck.get('version')}, this neurohw reads {CHECKPOINT_VERSION}")
    for key in ("config", "epoch", "state", *keys):
        if key not in ck:
            raise CheckpointError(f"checkpoint '{path}' lacks the entry '{key}'")
    return ck


def majority_error(labels: torch.Tensor, n_classes: int) -> float:
    """The error of always predicting the most frequent class of `labels` (1 − 1/K when balanced)."""
    if len(labels) == 0:
        return math.nan
    counts = torch.bincount(labels.long(), minlength=n_classes)
    return 1.0 - float(counts.max()) / len(labels)


class Run:
    """A run directory and its epoch loop (module doc). `config` is the resolved config as a dict (what
    the checkpoint stores and resume compares), `config_toml` its text (config.toml)."""

    def __init__(
        self, root: str | Path, config: dict[str, Any], config_toml: str, *, epochs: int, patience: int, resume: bool,
        overwrite: bool, is_main: bool = True, say: Callable[[str], None] | None = None, notes=(), keys=(),
    ):
        self.dir, self.config, self.config_toml = RunDir(root), config, config_toml
        self.data: dict[str, Any] = {}  # the data's fingerprint and preprocessing (set_data), kept with the run
        self.epochs, self.patience, self.is_main = epochs, patience, is_main
        self.say = say if (say is not None and is_main) else (lambda _: None)
        self.keys = tuple(keys)
        self.state = RunState(warnings=list(notes))
        for note in notes:
            self.say(f"warning: {note}")
        self.resume = resume and self._resumable(overwrite)
        if not resume and is_main:
            self._check_free(overwrite)

    # ------------------------------------------------------------------------------- set-up
    def _check_free(self, overwrite: bool) -> None:
        existing = [p for p in self.dir.artefacts() if p.exists()]
        if existing and not overwrite:
            only_config = [p.name for p in existing] == ["config.toml"]
            hint = ("a run that stopped before its first epoch finished; pass --resume to start it again from its "
                    "config.toml") if only_config else "pass --resume to continue it"
            raise CheckpointError(
                f"run directory '{self.dir.root}' already holds a run ({existing[0].name}): {hint}, --overwrite to "
                "replace it, or another --out"
            )

    def _resumable(self, overwrite: bool) -> bool:
        """Whether --resume has a checkpoint to continue; a run that stopped before its first checkpoint
        (config.toml only) starts again from scratch."""
        if self.dir.checkpoint.exists():
            return True
        if self.dir.config.exists():
            self.say(f"'{self.dir.root}' has no checkpoint yet (it stopped before its first epoch finished): "
                     "starting it from scratch with its config")
            return False
        raise CheckpointError(f"--resume: '{self.dir.root}' holds no run (no checkpoint.pt, no config.toml)")

    def set_data(self, fingerprint: dict[str, Any], preprocessing: dict[str, Any]) -> None:
        """The data the run trains on: its fingerprint (dataset, resolved path, sha256 — written into
        config.toml as a comment, kept in the checkpoint and checked on --resume) and its preprocessing
        (kept with the checkpoint and best.pt, for the exported network)."""
        self.data = {"fingerprint": dict(fingerprint), "preprocessing": dict(preprocessing)}

    def _config_text(self) -> str:
        fp = self.data.get("fingerprint")
        if not fp or not fp.get("sha256"):
            return self.config_toml
        return self.config_toml + (
            f"\n# the data this run trains on (written by neurohw, checked on --resume): dataset = {fp['dataset']}, "
            f"path = {fp['path']}, sha256 = {fp['sha256']}, files = {fp['files']}\n"
        )

    def start(self) -> None:
        """Create the directory (replacing the files of an overwritten run) and write config.toml; called
        once the training mode is set up, so that a config error leaves nothing behind."""
        if not self.is_main:
            return
        if not self.resume:
            for p in self.dir.artefacts():
                if p.exists():
                    p.unlink()
        self.dir.root.mkdir(parents=True, exist_ok=True)
        write_text(self.dir.config, self._config_text())
        if self.resume:  # drop the lines of an epoch that never reached its checkpoint
            write_text(self.dir.metrics, "".join(json.dumps(line) + "\n" for line in self.state.history))

    def load(self, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The checkpoint to continue (config compared, schedule checked, run state restored), or None."""
        if not self.resume:
            return None
        ck = load_checkpoint(self.dir.checkpoint, map_location, self.keys)
        diff = config_diff(ck["config"], self.config)
        if diff:
            raise CheckpointError(f"--resume: the config differs from the checkpoint's in {'; '.join(diff)}")
        if "train" in self.config:
            check_extension(ck["config"], self.config)
        stored = (ck.get("data") or {}).get("fingerprint")
        if stored and self.data.get("fingerprint"):  # checkpoints before fingerprints have none to compare
            from neurohw.data import check_fingerprint

            for note in check_fingerprint(stored, self.data["fingerprint"], f"the run in '{self.dir.root}'"):
                self.say(f"note: {note}")
        self.state = RunState(**{**ck["state"], "warnings": list(ck["state"].get("warnings", []))})
        self.say(f"resumed '{self.dir.root}' after epoch {self.state.epoch}")
        return ck

    # --------------------------------------------------------------------------------- loop
    def finished(self) -> str | None:
        """Why there is nothing left to train (run complete, or stopped by patience), or None."""
        state = self.state
        if state.epoch >= self.epochs:
            return (
                f"'{self.dir.root}' is already complete: {state.epoch} of train.epochs = {self.epochs} epochs trained; "
                "nothing to do (to train longer: --resume with a larger train.epochs)"
            )
        stale = state.epoch - state.best_epoch
        if self.patience and state.epoch and stale >= self.patience:
            return (
                f"'{self.dir.root}' stopped early after epoch {state.epoch}: no better validation error for {stale} epochs "
                f"(train.patience = {self.patience}); nothing to do (to go on: --resume with a larger train.patience)"
            )
        return None

    def fit(self, source: EpochSource, warnings: Callable[[dict[str, Any], list[dict]], list[str]]) -> float:
        """Train the remaining epochs of `source`; returns this session's wall time. `warnings(line,
        history)` names what an epoch shows about a run that does not learn."""
        wall_start = time.perf_counter()
        done = self.finished()
        if done is not None:
            self.say(done)
            return 0.0
        for epoch in range(self.state.epoch, self.epochs):
            t0 = time.perf_counter()
            result = source.train_epoch(epoch)
            if self.close_epoch(source, epoch, result, t0, time.perf_counter() - t0, warnings):
                break
        return time.perf_counter() - wall_start

    def close_epoch(self, source: EpochSource, epoch: int, result: tuple[float, float, int], t0: float, train_wall: float,
                    warnings: Callable[[dict[str, Any], list[dict]], list[str]]) -> bool:
        """Everything after an epoch's training (`result` = mean loss, error rate, samples): evaluation,
        the metrics line, warnings, selection, checkpoints, the epoch line. True when patience stops the
        run. (A population of nets trains its members together and closes each member's epoch here.)"""
        state = self.state
        train_loss, train_error, n_seen = result
        val_error, test_error = source.error("val"), source.error("test")
        line = {
            "epoch": epoch + 1,
            "train_error": train_error,
            "train_loss": train_loss,
            "val_error": val_error,
            "test_error": test_error,
            "wall_s": None,
            "samples_per_s": n_seen / train_wall,
            **source.epoch_metrics(epoch),
        }
        source.end_epoch(epoch)
        line["wall_s"] = time.perf_counter() - t0
        state.epoch = epoch + 1
        state.history.append(line)
        found = warnings(line, state.history[:-1])
        if found:
            line["warnings"] = found
            state.warnings.extend(found)
        improved = not (val_error >= state.best_val)  # NaN val (val_size = 0) selects the last epoch
        if improved:
            state.best_val, state.best_epoch, state.best_test = val_error, epoch + 1, test_error
        self.save(source, line, improved)
        self.say(
            f"epoch {epoch + 1:3d}/{self.epochs}  train {100 * train_error:6.2f} %  val {100 * val_error:6.2f} %  "
            f"test {100 * test_error:6.2f} %  {line['wall_s']:7.1f} s  {line['samples_per_s']:8.0f} samples/s"
            + (f"  {line['pulses']} pulses" if "pulses" in line else "")
        )
        for w in found:
            self.say(f"warning: {w}")
        stale = state.epoch - state.best_epoch
        if self.patience and stale >= self.patience:
            self.say(f"early stop: no better validation error for {stale} epochs")
            return True
        return False

    def save(self, source: EpochSource, line: dict[str, Any], improved: bool) -> None:
        """Append the epoch's metrics line; write best.pt if improved and the checkpoint (atomically)."""
        if not self.is_main:
            return
        with open(self.dir.metrics, "a") as f:
            f.write(json.dumps(line) + "\n")
        if improved:
            best = {"epoch": self.state.epoch, **source.best_state(), "data": self.data}
            write_with(self.dir.best, lambda f: torch.save(best, f))
        from neurohw import __version__

        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "neurohw_version": __version__,
            "config": self.config,
            "epoch": self.state.epoch,
            "state": {k: getattr(self.state, k) for k in STATE_KEYS},
            "data": self.data,
            **source.checkpoint_state(),
        }
        write_with(self.dir.checkpoint, lambda f: torch.save(checkpoint, f))

    def summary(self, wall_s: float, extras: dict[str, Any]) -> dict[str, Any]:
        """summary.json: the selected epoch, the final line, warnings, wall times, the machine."""
        from neurohw import __version__

        state = self.state
        summary = {
            "run": str(self.dir.root),
            **extras,
            "epochs": state.epoch,
            "best_epoch": state.best_epoch,
            "val_error": state.best_val,
            "test_error": state.best_test,
            "final": state.history[-1] if state.history else None,
            "warnings": list(state.warnings),
            "wall_s_this_session": wall_s,
            "wall_s_total": sum(h["wall_s"] for h in state.history),
            "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "neurohw": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.is_main:
            write_text(self.dir.summary, json.dumps(summary, indent=2) + "\n")
        return summary


def learning_warnings(
    line: dict[str, Any], earlier: list[dict[str, Any]], majority: dict[str, float], lrs: tuple[float, ...]
) -> list[str]:
    """Warnings that the epoch of `line` shows a run that does not learn (see CHANCE_MARGIN)."""
    out, e = [], line["epoch"]
    lr_text = "[" + ", ".join(f"{lr:g}" for lr in lrs) + "]"
    near = [
        f"the {name} error {100 * line[key]:.1f} % (majority class: {100 * majority[split]:.1f} %)"
        for name, key, split in (("training", "train_error", "train"), ("validation", "val_error", "val"))
        if line[key] > majority[split] - CHANCE_MARGIN  # NaN (no validation split) never warns
    ]
    if near:
        out.append(
            f"epoch {e}: {' and '.join(near)} within {100 * CHANCE_MARGIN:.0f} points of always answering the "
            f"majority class: the net is not learning. Likely causes: train.lrs = {lr_text} too large (the weights "
            "jump and the states saturate) or too small, learner.beta too small, or too few relaxation steps "
            "(learner.T_free) for the dynamics to settle"
        )
    losses = [h["train_loss"] for h in earlier]
    if losses and line["train_loss"] > LOSS_RISE_FACTOR * min(losses):
        k = min(range(len(losses)), key=lambda i: losses[i])
        now = f", lrs this epoch {[round(lr, 6) for lr in line['lrs']]}" if "lrs" in line else ""
        out.append(
            f"epoch {e}: the training loss {line['train_loss']:.4g} is more than {LOSS_RISE_FACTOR:g}× its lowest "
            f"value {losses[k]:.4g} (epoch {k + 1}): training is diverging. Likely cause: learning rates too large "
            f"for this stage of training (train.lrs = {lr_text}{now})"
        )
    unsettled, over = line.get("free_unsettled", 0.0), line.get("loop_gain_over_1", 0.0)
    if unsettled > UNSETTLED_FRACTION or over > 0.0:
        what = []
        if unsettled > UNSETTLED_FRACTION:
            what.append(f"has not settled for {100 * unsettled:.0f} % of the diagnostic inputs (‖G(s*) − s*‖/‖s*‖ up to "
                        f"{line['free_residual_max']:.2g} after learner.T_free steps)")
        if over > 0.0:
            what.append(f"has a fixed point that repels for {100 * over:.0f} % of them (loop gain up to "
                        f"{line['loop_gain_max']:.3g} ≥ 1)")
        out.append(
            f"epoch {e}: the free phase {' and '.join(what)}: the EP updates are then not gradient estimates "
            "(docs/math.md eq. settle). Likely causes: too few relaxation steps (learner.T_free), or weights grown so "
            f"large that the dynamics lose their fixed point (train.lrs = {lr_text}, train.weight_decay; for C-VF also "
            "learner.feedback_lr_ratio)"
        )
    return out


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar (None when disabled; tqdm hides itself when stderr is not a terminal)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
