"""The training loop: every card runs, --resume is exact, bad runs fail cleanly, DDP equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurohw.cli import main
from neurohw.config import load_config
from neurohw.errors import CheckpointError, ConfigError
from neurohw.train import load_checkpoint, train
from tests.conftest import fake_splits

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
FAST = ["train.epochs=1", "train.batch_size=10", "data.limit_train=40", "data.limit_eval=20", "device=cpu"]


def run_card(card: str, out: Path, overrides: list[str], splits=None) -> dict:
    cfg = load_config(MODELS / f"{card}.toml", overrides)
    return train(cfg, out, splits=splits, progress=False, log=None)


# Data for the learning check of each card: 200 training samples in batches of 10 (20 batches), or 2,000
# in batches of 20 for C-EP and C-VF, whose per-step learning rates make a batch's update ≈ 10–14× smaller
# than EP's; 100 test samples. Chance is 0.9 (10 classes).
FEW = ["data.limit_train=200", "data.limit_eval=100"]
MORE = ["data.limit_train=2000", "data.limit_eval=100", "train.batch_size=20"]
CONV = ["data.limit_train=200", "data.limit_eval=100", "train.batch_size=20"]


@pytest.mark.parametrize(
    "card, extra, data",
    [
        ("mnist_ep_fc1", [], FEW),  # the card as published (T 30/10), a few batches
        ("mnist_ep_fc2", ["learner.T_free=20", "learner.T_nudge=5"], FEW),
        ("mnist_cep_fc1", [], MORE),
        ("mnist_cvf_fc1", [], MORE),
        ("mnist_ep_conv", ["learner.T_free=40", "learner.T_nudge=6"], CONV),  # T 20/4 does not learn in 2,000 samples
        ("mnist_ep_fc1", ["learner.estimator=symmetric", "net.cost=ce_readout", "net.hidden=[64, 32]", "train.lrs=[0.2]"],
         FEW),
        ("mnist_ep_fc1", ["learner.algorithm=bptt", "learner.T_backprop=10"], FEW),
        ("mnist_ep_fc1", ["learner.algorithm=bp", "train.optimizer=adam", "train.lrs=[0.001]"], FEW),
    ],
)
def test_every_mnist_card_runs_a_few_batches(card, extra, data, tmp_path, mnist_small):
    """Each card trains one short epoch on real MNIST and its test error falls clearly below chance (0.9).

    Measured test errors (100 test samples; 8e027bf and a7d08b0): EP-fc1 0.41, EP-fc2 0.48, C-EP 0.54,
    C-VF 0.49, EP-conv 0.60, EP symmetric/CE 0.48, BPTT 0.47, BP 0.34. The bound 0.75 leaves ≥ 0.15 above
    the worst. Planted mistakes it catches (measured): the nudge's sign flipped in the folded dense
    step (EP-fc1, EP-fc2, EP symmetric/CE at 0.86–0.92) or in `cost_grad` (C-EP, C-VF, EP-conv at 0.92),
    `.grad`'s sign flipped (the four EP cards at 0.92–0.93), EP without its 1/β (0.76–0.85), C-EP/C-VF
    without their 1/β (0.85)."""
    overrides = FAST + data + extra
    summary = run_card(card, tmp_path, overrides, splits=mnist_small)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    for key in ("epoch", "train_error", "val_error", "test_error", "wall_s", "samples_per_s"):
        assert key in line
    assert line["test_error"] < 0.75 and summary["test_error"] == line["test_error"]
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "best.pt").exists()
    assert load_config(tmp_path / "config.toml") == load_config(MODELS / f"{card}.toml", overrides)
    if card == "mnist_cvf_fc1":
        assert len(line["weight_angles_deg"]) == 1


def test_cifar_card_runs_a_few_batches_on_cpu(tmp_path):
    """The full-width VGG of Laborieux et al. 2021 (short phases; CIFAR-10 is not in the repo: random images)."""
    splits = fake_splits("cifar10", n_train=8, n_eval=4)
    summary = run_card(
        "cifar10_ep_vgg", tmp_path, ["train.epochs=1", "train.batch_size=4", "learner.T_free=3", "learner.T_nudge=2", "device=cpu"], splits
    )
    assert summary["epochs"] == 1
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["net"]["layers.4.weight"].shape == (10, 512)  # the CE readout
    assert ck["optimizer"]["param_groups"][0]["momentum"] == 0.9


SMALL = [
    "net.hidden=[32]", "learner.T_free=10", "learner.T_nudge=4", "learner.estimator=random-sign",
    "data.augment=true", "data.crop_padding=2", "train.momentum=0.9", "train.scheduler=cosine",
    "train.cosine_epochs=3", "train.batch_size=20", "data.limit_train=200", "data.limit_eval=100",
    "device=cpu", "dtype=float64",
]


def _strip(lines):
    return [{k: v for k, v in l.items() if k not in ("wall_s", "samples_per_s")} for l in lines]


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, mnist_small, monkeypatch):
    full = run_card("mnist_ep_fc1", tmp_path / "full", SMALL + ["train.epochs=3"], mnist_small)

    import neurohw.learning.ep as ep_module

    calls = {"n": 0}
    real_step = ep_module.EP.step

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 15:  # in the second epoch (10 batches per epoch)
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ep_module.EP, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        run_card("mnist_ep_fc1", tmp_path / "cut", SMALL + ["train.epochs=3"], mnist_small)
    monkeypatch.setattr(ep_module.EP, "step", real_step)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", SMALL + ["train.epochs=3"])
    resumed = train(cfg, tmp_path / "cut", resume=True, splits=mnist_small, progress=False, log=None)

    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for k in a["net"]:
        assert torch.equal(a["net"][k], b["net"][k]), k
    read = lambda p: [json.loads(l) for l in p.read_text().splitlines()]
    assert _strip(read(tmp_path / "full" / "metrics.jsonl")) == _strip(read(tmp_path / "cut" / "metrics.jsonl"))
    assert full["test_error"] == resumed["test_error"] and full["best_epoch"] == resumed["best_epoch"]


def test_model_selection_uses_validation_only(tmp_path, mnist_small):
    summary = run_card("mnist_ep_fc1", tmp_path, SMALL + ["train.epochs=3"], mnist_small)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = min(range(3), key=lambda i: (lines[i]["val_error"], i))
    assert summary["best_epoch"] == best + 1
    assert summary["test_error"] == lines[best]["test_error"]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == best + 1


def test_resume_refuses_a_changed_config_and_a_corrupt_checkpoint(tmp_path, mnist_small):
    run_card("mnist_ep_fc1", tmp_path, SMALL + ["train.epochs=1"], mnist_small)
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", SMALL + ["train.epochs=2", "learner.beta=0.3"])
    with pytest.raises(CheckpointError, match="learner.beta"):
        train(cfg, tmp_path, resume=True, splits=mnist_small, progress=False, log=None)
    ck = tmp_path / "checkpoint.pt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])  # truncated
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", SMALL + ["train.epochs=2"])
    with pytest.raises(CheckpointError, match=str(ck)):
        train(cfg, tmp_path, resume=True, splits=mnist_small, progress=False, log=None)
    ck.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(cfg, tmp_path, resume=True, splits=mnist_small, progress=False, log=None)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(cfg, tmp_path / "empty", resume=True, splits=mnist_small, progress=False, log=None)


def test_existing_run_is_not_overwritten_by_accident(tmp_path, mnist_small):
    run_card("mnist_ep_fc1", tmp_path, SMALL + ["train.epochs=1"], mnist_small)
    with pytest.raises(CheckpointError, match="--overwrite"):
        run_card("mnist_ep_fc1", tmp_path, SMALL + ["train.epochs=1"], mnist_small)
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", SMALL + ["train.epochs=1"])
    train(cfg, tmp_path, overwrite=True, splits=mnist_small, progress=False, log=None)


def test_checkpoint_write_is_atomic(tmp_path, mnist_small, monkeypatch):
    """A crash while the checkpoint is written leaves the previous complete checkpoint in place."""
    run_card("mnist_ep_fc1", tmp_path, SMALL + ["train.epochs=1"], mnist_small)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("format") == "neurohw-checkpoint":
            f.write(b"partial")
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", SMALL + ["train.epochs=2"])
    with pytest.raises(OSError, match="disk full"):
        train(cfg, tmp_path, resume=True, splits=mnist_small, progress=False, log=None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_lrs_and_batch_are_named(tmp_path, mnist_small):
    with pytest.raises(ConfigError, match="train.lrs has 3 values but the net has 2 layers"):
        run_card("mnist_ep_fc1", tmp_path, FAST + ["train.lrs=[0.1, 0.1, 0.1]"], mnist_small)
    with pytest.raises(ConfigError, match="batch_size"):
        run_card("mnist_ep_fc1", tmp_path / "b", FAST + ["train.batch_size=100000"], mnist_small)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    code = main(["train", str(MODELS / "mnist_ep_fc1.toml"), "train.epoch=1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "train.epoch" in err and "did you mean 'train.epochs'" in err
    assert not any(tmp_path.iterdir())  # nothing written


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), NEUROHW_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def test_torchrun_two_processes_equal_one(tmp_path):
    """Data sharded over two gloo processes, gradients all-reduced: the same weights as one process
    on the same global batch (float64; only the summation order differs, ~1e-16 per step)."""
    overrides = [
        "net.hidden=[32]", "learner.T_free=10", "learner.T_nudge=4", "learner.estimator=random-sign",
        "data.augment=true", "train.epochs=1", "train.batch_size=20", "data.limit_train=200",
        "data.limit_eval=100", "dtype=float64", "device=cpu",
    ]
    card = str(MODELS / "mnist_ep_fc1.toml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "neurohw",
           "train", card, *overrides, "--out", str(tmp_path / "ddp"), "--no-progress"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "neurohw", "train", card, *overrides, "--out", str(tmp_path / "one"), "--no-progress"],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    for k in a["net"]:
        assert torch.allclose(a["net"][k], b["net"][k], rtol=0, atol=1e-12), k
    ma = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text())
    mb = json.loads((tmp_path / "one" / "metrics.jsonl").read_text())
    assert ma["val_error"] == mb["val_error"] and ma["test_error"] == mb["test_error"]
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2


def test_early_stopping_on_validation(tmp_path, mnist_small):
    """With a zero learning rate the validation error never improves: patience 1 stops after epoch 2."""
    summary = run_card("mnist_ep_fc1", tmp_path, SMALL + ["train.epochs=5", "train.lrs=[0.0]", "train.patience=1"], mnist_small)
    assert summary["epochs"] == 2 and summary["best_epoch"] == 1
