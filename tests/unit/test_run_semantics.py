"""What a run means: resume never silently changes the schedule, a run that does not learn says so,
C-EP's weight decay spreads over the nudged steps as one EP step (issue findings, each planted first)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neurohw.cli import main
from neurohw.config import NetConfig, load_config
from neurohw.errors import CheckpointError, ConfigError
from neurohw.learning import CEP, EP
from neurohw.learning.cep import ContinualDecay
from neurohw.nets.build import build_net
from neurohw.train import Trainer, train
from tests.conftest import max_abs_diff

MODELS = Path(__file__).resolve().parents[2] / "models"
TINY = ["data.limit_train=100", "data.limit_eval=50", "data.val_size=50", "net.hidden=[16]", "learner.T_free=8",
        "learner.T_nudge=3", "device=cpu"]


def _lines(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ resume × schedule
def test_resume_refuses_to_stretch_a_cosine_schedule_over_new_epochs(tmp_path, mnist_small, capsys):
    """The finding: a 1-epoch cosine run resumed with train.epochs=3 trained epoch 2 at lr 0 and epoch 3
    at full lr again (the scheduler kept the span of 1 and restarted its cosine)."""
    run = tmp_path / "s1"
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1"])
    train(cfg, run, splits=mnist_small, progress=False, log=None)
    longer = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=3"])
    with pytest.raises(CheckpointError, match=r"anneals over 1 epochs.*train.cosine_epochs=1"):
        train(longer, run, resume=True, splits=mnist_small, progress=False, log=None)
    # keeping the span is allowed, but a schedule that ended at lr 0 cannot train on
    kept = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=3", "train.cosine_epochs=1"])
    with pytest.raises(CheckpointError, match=r"lr_min = 0.*learning rate 0"):
        train(kept, run, resume=True, splits=mnist_small, progress=False, log=None)
    assert len(_lines(run)) == 1  # nothing was trained by the refused resumes


def test_resume_ignores_the_cards_reference_section_and_nothing_else(tmp_path, mnist_small):
    """The finding: recording a new measured figure in a card's [reference] `ours` while a sweep of that
    card ran would have refused the sweep's --resume (config differs in reference.ours). [reference]
    describes the run and changes nothing it computes; every other key still refuses by name."""
    run = tmp_path / "ref"
    base = TINY + ["train.epochs=1", "train.cosine_epochs=2"]
    train(load_config(MODELS / "mnist_ep_fc1.toml", base), run, splits=mnist_small, progress=False, log=None)
    beta = load_config(MODELS / "mnist_ep_fc1.toml", base + ["train.epochs=2", "learner.beta=0.3"])
    with pytest.raises(CheckpointError, match=r"differs from the checkpoint's in learner.beta"):
        train(beta, run, resume=True, splits=mnist_small, progress=False, log=None)
    noted = load_config(MODELS / "mnist_ep_fc1.toml", base + ["train.epochs=2", "reference.ours='2.0 % (new figure)'"])
    train(noted, run, resume=True, splits=mnist_small, progress=False, log=None)
    assert [l["epoch"] for l in _lines(run)] == [1, 2]
    assert "2.0 % (new figure)" in (run / "config.toml").read_text()  # the run's config carries the card's text


def test_extending_a_run_continues_at_lr_min_after_the_cosine(tmp_path, mnist_small):
    base = TINY + ["train.lr_min=0.01", "train.lrs=[0.08, 0.04]"]
    run = tmp_path / "s2"
    train(load_config(MODELS / "mnist_ep_fc1.toml", base + ["train.epochs=2"]), run, splits=mnist_small, progress=False, log=None)
    extended = load_config(MODELS / "mnist_ep_fc1.toml", base + ["train.epochs=4", "train.cosine_epochs=2"])
    train(extended, run, resume=True, splits=mnist_small, progress=False, log=None)
    lrs = [l["lrs"] for l in _lines(run)]
    assert lrs[0] == [0.08, 0.04]
    assert lrs[1] == pytest.approx([0.045, 0.025])  # halfway down the cosine of span 2 to lr_min 0.01
    assert lrs[2] == lrs[3] == [0.01, 0.01]  # then constant lr_min: defined, never 0, never back up


def test_resume_of_a_complete_run_says_so(tmp_path, mnist_small, capsys):
    run = tmp_path / "done"
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1"])
    first = train(cfg, run, splits=mnist_small, progress=False, log=None)
    said = []
    again = train(cfg, run, resume=True, splits=mnist_small, progress=False, log=said.append)
    assert any("already complete" in s and "1 of train.epochs = 1" in s for s in said)
    assert again["test_error"] == first["test_error"] and len(_lines(run)) == 1


def test_resume_of_a_run_stopped_by_patience_says_so(tmp_path, mnist_small):
    run = tmp_path / "early"
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=6", "train.patience=1", "train.lrs=[0.0]"])
    train(cfg, run, splits=mnist_small, progress=False, log=None)  # lr 0: no epoch improves on the first
    n = len(_lines(run))
    assert n == 2
    said = []
    train(cfg, run, resume=True, splits=mnist_small, progress=False, log=said.append)
    assert any("stopped early" in s and "train.patience" in s for s in said) and len(_lines(run)) == n


# ------------------------------------------------------------------------- a run that learns nothing
def test_a_run_at_chance_warns_and_records_it(tmp_path, mnist_small):
    """The finding: train.lrs=[1000.0] with sigmoid4 trained to chance and exited 0 without a word."""
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1", "train.lrs=[1000.0]"])
    said = []
    summary = train(cfg, tmp_path, splits=mnist_small, progress=False, log=said.append)
    warned = [s for s in said if s.startswith("warning:")]
    assert len(warned) == 1 and "not learning" in warned[0] and "train.lrs = [1000]" in warned[0]
    assert summary["warnings"] and "majority class" in summary["warnings"][0]
    assert json.loads((tmp_path / "summary.json").read_text())["warnings"] == summary["warnings"]
    healthy = train(load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1", "data.limit_train=600"]),
                    tmp_path / "ok", splits=mnist_small, progress=False, log=None)
    assert healthy["warnings"] == [] and healthy["test_error"] < 0.5
    line = json.loads((tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["free_unsettled"] == 0.0 and line["loop_gain_max"] < 1.0  # settled: no warning


def test_a_rising_training_loss_warns(tmp_path, mnist_small):
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1"])
    trainer = Trainer(cfg, tmp_path, resume=False, overwrite=False, data_dir=None, splits=mnist_small, progress=False, log=None)
    base = {"train_error": 0.1, "val_error": 0.1, "lrs": [0.08, 0.04]}
    trainer.state.history = [dict(base, epoch=1, train_loss=0.2), dict(base, epoch=2, train_loss=0.05)]
    assert trainer.learning_warnings(trainer.state.history[-1]) == []
    trainer.state.history.append(dict(base, epoch=3, train_loss=0.11))
    (w,) = trainer.learning_warnings(trainer.state.history[-1])
    assert "0.11 is more than 2× its lowest value 0.05 (epoch 2)" in w
    trainer.state.history[-1]["train_loss"] = 0.099  # just under the stated factor: no warning
    assert trainer.learning_warnings(trainer.state.history[-1]) == []


def test_a_free_phase_that_does_not_settle_warns(tmp_path, mnist_small):
    """Every epoch records how well the free phase settles (dynamics.settling); with learner.T_free = 1 it
    does not (one more step still moves every state) and the run says so, naming the key to change."""
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1", "learner.T_free=1", "learner.T_nudge=1"])
    said = []
    summary = train(cfg, tmp_path, splits=mnist_small, progress=False, log=said.append)
    (line,) = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert line["free_unsettled"] == 1.0 and line["free_residual_median"] > 0.1
    assert 0.0 <= line["loop_gain_max"] < 1.0 and line["loop_gain_over_1"] == 0.0
    (w,) = [s for s in said if "has not settled" in s]
    assert "100 % of the diagnostic inputs" in w and "learner.T_free" in w and any("not settled" in s for s in summary["warnings"])


# ---------------------------------------------------------------------------- C-EP weight decay
class _Fixed:
    """Writes the same stored gradient g_k into .grad at each of T calls, then applies (a fake learner)."""

    def __init__(self, params, grads):
        self.params, self.grads = params, grads

    def run(self, apply):
        for g_k in self.grads:
            for p, g in zip(self.params, g_k):
                p.grad = g.clone()
            apply()


@pytest.mark.parametrize("T", [1, 4, 15])
def test_continual_decay_gives_one_ep_decay_per_batch_exactly(T):
    """eq. C-EP-decay with plain SGD: θ_T = (1 − ηλ)θ_0 − η Σ_k g_k per group, to float64 round-off.
    Planted: applying λ at every step without the correction leaves θ_T = (1 − ηλ)^T θ_0 − … (off by
    ≈ (T − 1)ηλ|θ|) and dropping the gradient rescaling decays early gradients again (off by ≈ Tηλ|g|)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    pa, pb = torch.nn.Parameter(a.clone()), torch.nn.Parameter(b.clone())
    lrs, lam = (0.3, 0.05), 0.4
    opt = torch.optim.SGD([{"params": [pa], "lr": lrs[0]}, {"params": [pb], "lr": lrs[1]}], lr=lrs[0], weight_decay=lam)
    grads = [[torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2)] for _ in range(T)]
    for _ in range(2):  # two batches: the factors are recomputed at each batch's first step
        start = (pa.detach().clone(), pb.detach().clone())
        _Fixed([pa, pb], grads).run(ContinualDecay(opt, lam, T))
        for p, p0, lr, i in ((pa, start[0], lrs[0], 0), (pb, start[1], lrs[1], 1)):
            expected = (1 - lr * lam) * p0 - lr * sum(gk[i] for gk in grads)
            assert float((p.detach() - expected).abs().max()) < 1e-13


def test_continual_decay_refuses_a_decay_past_zero():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=2.0)
    p.grad = torch.zeros(2)
    with pytest.raises(ConfigError, match=r"weight_decay = 0.5.*layer 0"):
        ContinualDecay(opt, 0.5, 3)()


def _cep_wd_vs_ep(eta: float, lam: float) -> float:
    """|θ after one C-EP batch with decay − θ after one EP batch with decay| relative to EP's change."""
    g = torch.Generator().manual_seed(5)
    net = build_net(NetConfig(hidden=(10,), activation="sigmoid4"), (1, 3, 3), 4, generator=g).double()
    x = torch.rand(6, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(6) % 4, 4).double()
    theta0 = [p.detach().clone() for p in net.param_list()]
    ep_net = build_net(NetConfig(hidden=(10,), activation="sigmoid4"), (1, 3, 3), 4).double()
    ep_net.load_state_dict(net.state_dict())
    opt = torch.optim.SGD(ep_net.parameters(), lr=eta, weight_decay=lam)
    EP(0.2, 60, 8).step(ep_net, x, y, opt.step)
    opt = torch.optim.SGD(net.parameters(), lr=eta, weight_decay=lam)
    CEP(0.2, 60, 8).step(net, x, y, ContinualDecay(opt, lam, 8))
    change = [p.detach() - t for p, t in zip(ep_net.param_list(), theta0)]
    return max_abs_diff(net.param_list(), ep_net.param_list()) / max(float(c.abs().max()) for c in change)


def test_cep_batch_with_weight_decay_tends_to_ep_batch_with_weight_decay():
    """As η → 0 a C-EP batch with decay λ equals EP's batch with decay λ (relative error O(η)); with
    the decay applied uncorrected at each of the T = 8 steps the decay term alone is 8× EP's, and the
    error stays O(1) (measured 4.8 at every η, planted by passing opt.step instead of ContinualDecay)."""
    errors = [_cep_wd_vs_ep(eta, 2.0) for eta in (1e-2, 1e-3, 1e-4)]
    assert errors[2] < 3e-3
    assert 5 < errors[0] / errors[1] < 20 and 5 < errors[1] / errors[2] < 20


def test_trainer_uses_the_decay_correction_for_continual_learners(tmp_path, mnist_small):
    cfg = load_config(MODELS / "mnist_cep_fc1.toml", TINY + ["train.epochs=1", "train.weight_decay=1e-3"])
    trainer = Trainer(cfg, tmp_path, resume=False, overwrite=False, data_dir=None, splits=mnist_small, progress=False, log=None)
    assert isinstance(trainer.apply, ContinualDecay) and trainer.apply.T == 3
    ep = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1", "train.weight_decay=1e-3"])
    assert not isinstance(Trainer(ep, tmp_path / "ep", resume=False, overwrite=False, data_dir=None, splits=mnist_small,
                                  progress=False, log=None).apply, ContinualDecay)


def test_adam_is_refused_for_continual_learners():
    for card in ("mnist_cep_fc1", "mnist_cvf_fc1"):
        with pytest.raises(ConfigError, match=r"train.optimizer = 'adam'.*every nudged step"):
            load_config(MODELS / f"{card}.toml", ["train.optimizer=adam"])


# ------------------------------------------------------------------------------ the command line
def test_cli_prints_config_warnings_once_and_records_them(tmp_path, capsys):
    out = tmp_path / "bp"
    assert main(["train", str(MODELS / "mnist_ep_fc1.toml"), "learner.algorithm=bp", "train.epochs=1",
                 "data.limit_train=60", "data.limit_eval=20", "data.val_size=20", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr()
    assert (err.out + err.err).count("net.nudge") == 1
    assert any("net.nudge" in w for w in json.loads((out / "summary.json").read_text())["warnings"])


# ------------------------------------------------------------------------------ runs that fail early
def test_a_config_error_leaves_no_folder(tmp_path, mnist_small):
    """The finding: a run refused at set-up left a folder behind, which then blocked the rerun."""
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.lrs=[0.1, 0.1, 0.1]"])  # 3 rates for 2 layers
    with pytest.raises(ConfigError, match="train.lrs has 3 values"):
        train(cfg, tmp_path / "bad", splits=mnist_small, progress=False, log=None)
    assert not (tmp_path / "bad").exists()


def test_a_run_that_fails_in_its_first_epoch_resumes_from_scratch(tmp_path, mnist_small, monkeypatch):
    """The finding: the folder held only config.toml; rerunning said 'pass --resume' and --resume said
    'no checkpoint'. Now the rerun's message says what happened, and --resume starts it again."""
    import neurohw.learning.ep as ep_module

    run = tmp_path / "r"
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1"])
    real = ep_module.EP.step
    monkeypatch.setattr(ep_module.EP, "step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, splits=mnist_small, progress=False, log=None)
    monkeypatch.setattr(ep_module.EP, "step", real)
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]
    with pytest.raises(CheckpointError, match="stopped before its first epoch finished; pass --resume"):
        train(cfg, run, splits=mnist_small, progress=False, log=None)
    said = []
    summary = train(load_config(run / "config.toml"), run, resume=True, splits=mnist_small, progress=False, log=said.append)
    assert any("starting it from scratch" in s for s in said) and summary["epochs"] == 1
    fresh = train(cfg, tmp_path / "fresh", splits=mnist_small, progress=False, log=None)
    assert summary["test_error"] == fresh["test_error"]  # from scratch means from scratch
    with pytest.raises(CheckpointError, match="holds no run"):
        train(cfg, tmp_path / "nothing", resume=True, splits=mnist_small, progress=False, log=None)


def test_a_corrupt_checkpoint_is_one_line_without_torchs_unsafe_advice(tmp_path, mnist_small):
    run = tmp_path / "c"
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", TINY + ["train.epochs=1"])
    train(cfg, run, splits=mnist_small, progress=False, log=None)
    (run / "checkpoint.pt").write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError) as e:
        train(cfg, run, resume=True, splits=mnist_small, progress=False, log=None)
    msg = str(e.value)
    assert "corrupt" in msg and "weights_only" not in msg and "\n" not in msg
