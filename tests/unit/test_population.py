"""Populations (neurohw/population.py): K nets trained as one program equal K single runs, a diverging
member stops alone, sweeps write their tables, resume is exact, torchrun shares the members out."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurohw.cli import main
from neurohw.config import load_config
from neurohw.errors import ConfigError
from neurohw.population import Member, Population, grid, split_values, sweep
from neurohw.train import load_checkpoint, train

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
BASE = ["train.epochs=2", "data.limit_train=100", "data.limit_eval=50", "data.val_size=50", "device=cpu",
        "dtype=float64", "learner.T_free=6", "learner.T_nudge=3", "train.scheduler=cosine", "train.lr_min=0.01"]

CASES = {
    "ep_random_sign_fc": ("mnist_ep_fc1", ["net.hidden=[16]", "learner.estimator=random-sign", "train.momentum=0.5",
                                           "data.augment=true", "data.crop_padding=1"]),
    "ep_symmetric_ce": ("mnist_ep_fc1", ["net.hidden=[12, 8]", "net.cost=ce_readout", "learner.estimator=symmetric",
                                         "train.lrs=[0.05]"]),
    "ep_conv": ("mnist_ep_conv", ["net.channels=[3, 4]", "net.kernel_sizes=[5, 3]"]),
    "cep_decay": ("mnist_cep_fc1", ["net.hidden=[16]", "train.weight_decay=1e-2", "train.lrs=[0.02, 0.01]"]),
    "cvf": ("mnist_cvf_fc1", ["net.hidden=[16]", "train.lrs=[0.02, 0.01]"]),
    "cvf_symmetric_decay": ("mnist_cvf_fc1", ["net.hidden=[16]", "train.lrs=[0.02, 0.01]", "learner.estimator=symmetric",
                                              "train.weight_decay=1e-2"]),
    "cvf_feedback_ratio": ("mnist_cvf_fc1", ["net.hidden=[16]", "train.lrs=[0.02, 0.01]", "learner.feedback_lr_ratio=0.4"]),
}
# the members of every case: their own seeds, β and learning rates (the first keeps the card's)
VARIANTS = [["train.seed=0"], ["train.seed=1", "learner.beta=0.3", "learner.seed=5"], ["train.seed=2", "train.momentum=0.9", "train.lrs=[0.03]"]]


@pytest.mark.parametrize("case", list(CASES))
def test_each_member_trains_as_its_single_run(case, tmp_path, mnist_small):
    """After 2 epochs (a cosine schedule, so the rates change at the boundary) the weights of member k
    equal those of the single run with member k's config to float64 round-off (1e-12 relative; measured
    ≈ 1e-16). Planted: one β for every member, the members' signs drawn from one generator, or one
    learning rate for all — each differs by ≥ 1e-3."""
    card, extra = CASES[case]
    variants = VARIANTS if case != "ep_symmetric_ce" else VARIANTS[:2]  # (its one lr for every layer)
    members = [Member(" ".join(v), load_config(MODELS / f"{card}.toml", BASE + extra + v), tmp_path / "pop" / f"m{k}", v)
               for k, v in enumerate(variants)]
    Population(members, splits=mnist_small, progress=False, log=None).fit()
    for k, v in enumerate(variants):
        train(load_config(MODELS / f"{card}.toml", BASE + extra + v), tmp_path / "one" / f"m{k}", splits=mnist_small,
              progress=False, log=None)
        a = load_checkpoint(tmp_path / "pop" / f"m{k}" / "checkpoint.pt")
        b = load_checkpoint(tmp_path / "one" / f"m{k}" / "checkpoint.pt")
        scale = max(float(t.abs().max()) for t in b["net"].values())
        assert max(float((a["net"][n] - b["net"][n]).abs().max()) for n in a["net"]) <= 1e-12 * scale, (k, v)
        la = [json.loads(l) for l in (tmp_path / "pop" / f"m{k}" / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(l) for l in (tmp_path / "one" / f"m{k}" / "metrics.jsonl").read_text().splitlines()]
        assert [l["lrs"] for l in la] == [l["lrs"] for l in lb] and [l["train_error"] for l in la] == [l["train_error"] for l in lb]


def test_a_diverging_member_stops_alone_and_the_sweep_says_so(tmp_path, mnist_small, capsys):
    out = tmp_path / "sw"
    items = [str(MODELS / "mnist_ep_fc1.toml"), "train.lrs=[0.05],[40.0]", "net.activation=identity", "net.hidden=[8]",
             "net.init_gains=[0.3]",
             *BASE[:5], "learner.T_free=6", "learner.T_nudge=3", "train.scheduler=none"]
    assert main(["sweep", *items, "--out", str(out), "--no-progress"]) == 0
    rows = read_csv(out / "sweep.csv")
    status = {r["train.lrs"]: r["status"] for r in rows}
    assert status["[0.05]"] == "complete" and status["[40.0]"].startswith("diverged in epoch")
    assert "diverged" in capsys.readouterr().out
    assert "[40.0]" in (out / "summary.md").read_text() and (out / "curves.png").stat().st_size > 1000


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grids_and_bad_grids():
    assert split_values("[0.08,0.04],[0.04,0.02]") == ["[0.08,0.04]", "[0.04,0.02]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    fixed, combos = grid(["train.seed=0,1", "learner.beta=0.2", "train.lrs=[1],[2]"])
    assert fixed == ["learner.beta=0.2"] and len(combos) == 4 and combos[1] == ["train.seed=0", "train.lrs=[2]"]
    fixed, combos = grid(["seed=3,4", "learner.beta=0.1,0.2"])
    assert fixed == [] and combos[1] == ["train.seed=3", "learner.seed=3", "learner.beta=0.2"] and len(combos) == 4
    assert grid(["seed=5"]) == (["train.seed=5", "learner.seed=5"], [[]])
    with pytest.raises(ConfigError, match="not a comma-separated list"):
        split_values("[1,2")
    with pytest.raises(ConfigError, match=r"sweep member train.sed=0.*unknown config key 'train.sed'"):
        sweep(MODELS / "mnist_ep_fc1.toml", ["train.sed=0,1"], "/tmp/never")
    with pytest.raises(ConfigError, match=r"train.epochs=abc.*expected int"):
        sweep(MODELS / "mnist_ep_fc1.toml", ["train.epochs=abc,2"], "/tmp/never")
    a = load_config(MODELS / "mnist_ep_fc1.toml", ["net.hidden=[8]"])
    b = load_config(MODELS / "mnist_ep_fc1.toml", ["net.hidden=[9]"])
    with pytest.raises(ConfigError, match=r"differ in net.hidden: the members of one program share"):
        Population([Member("a", a, Path("/tmp/never/a")), Member("b", b, Path("/tmp/never/b"))])


def test_a_killed_sweep_resumes_every_member_bit_for_bit(tmp_path, mnist_small, monkeypatch):
    import neurohw.population as pop

    items = ["train.seed=0,1", "learner.estimator=random-sign", "net.hidden=[12]", *BASE]
    sweep(MODELS / "mnist_ep_fc1.toml", items, tmp_path / "full", splits=mnist_small, progress=False, log=None)
    real = pop.Population.train_epoch
    calls = {"n": 0}

    def crash(self, epoch, active):
        calls["n"] += 1
        if calls["n"] == 2:  # during the second epoch
            raise KeyboardInterrupt
        return real(self, epoch, active)

    monkeypatch.setattr(pop.Population, "train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        sweep(MODELS / "mnist_ep_fc1.toml", items, tmp_path / "cut", splits=mnist_small, progress=False, log=None)
    monkeypatch.setattr(pop.Population, "train_epoch", real)
    with pytest.raises(Exception, match="already holds a run"):
        sweep(MODELS / "mnist_ep_fc1.toml", items, tmp_path / "cut", splits=mnist_small, progress=False, log=None)
    with pytest.raises(ConfigError, match=r"--resume of .*items .*differs from the sweep's"):
        sweep(MODELS / "mnist_ep_fc1.toml", items[1:], tmp_path / "cut", resume=True, splits=mnist_small, progress=False, log=None)
    seen = {}
    monkeypatch.setattr(pop, "sweep", lambda card, items, out, **kw: seen.update(card=card, items=items, kw=kw) or [])
    assert main(["sweep", "--resume", "--out", str(tmp_path / "cut")]) == 0  # the card and grid come from sweep.json
    assert seen["card"] == str((MODELS / "mnist_ep_fc1.toml").resolve()) and seen["items"] == items and seen["kw"]["resume"]
    monkeypatch.undo()
    sweep(MODELS / "mnist_ep_fc1.toml", items, tmp_path / "cut", resume=True, splits=mnist_small, progress=False, log=None)
    for m in sorted((tmp_path / "full" / "members").iterdir()):
        a = load_checkpoint(m / "checkpoint.pt")
        b = load_checkpoint(tmp_path / "cut" / "members" / m.name / "checkpoint.pt")
        assert all(torch.equal(a["net"][n], b["net"][n]) for n in a["net"]), m.name
    strip = lambda p: [(r["member"], r["val_error"], r["test_error"]) for r in read_csv(p)]
    assert strip(tmp_path / "full" / "sweep.csv") == strip(tmp_path / "cut" / "sweep.csv")


def test_torchrun_shares_the_members_out_and_rank_0_writes_the_tables(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NEUROHW_OFFLINE="1", OMP_NUM_THREADS="1")
    args = [str(MODELS / "mnist_ep_fc1.toml"), "train.seed=0,1,2", "net.hidden=[8]", "train.epochs=1", "data.limit_train=60",
            "data.limit_eval=20", "data.val_size=20", "learner.T_free=4", "learner.T_nudge=2", "device=cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "neurohw", "sweep",
           *args, "--out", str(tmp_path / "ddp"), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_csv(tmp_path / "ddp" / "sweep.csv")
    assert [r["status"] for r in rows] == ["complete"] * 3
    one = subprocess.run([sys.executable, "-m", "neurohw", "sweep", *args, "--out", str(tmp_path / "one"), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    for r in read_csv(tmp_path / "one" / "sweep.csv"):
        a = load_checkpoint(tmp_path / "one" / r["dir"] / "checkpoint.pt")
        b = load_checkpoint(tmp_path / "ddp" / r["dir"] / "checkpoint.pt")
        assert all(torch.allclose(a["net"][n], b["net"][n], rtol=0, atol=1e-6) for n in a["net"]), r["member"]


@pytest.mark.parametrize("card", ["mnist_ep_fc1", "mnist_cvf_fc1"])
def test_population_bench_times_both_paths_and_bounds_the_speedup(card):
    """bench --population on EP and on C-VF (no Φ: its work is counted from the layers' products) reports
    the population and both sequential paths on the same samples, and a ceiling between 1 and K."""
    from neurohw.bench import run_population_bench

    r = run_population_bench(str(MODELS / f"{card}.toml"), ["net.hidden=[16]", "learner.T_free=4", "learner.T_nudge=2"],
                             members=2, batches=2)
    n = 2 * 2 * r["batch_size"]
    assert set(r["sequential_samples_per_s"]) == {"eager", "program"}
    best = max(r["sequential_samples_per_s"].values())
    assert r["speedup"] == pytest.approx(r["population_samples_per_s"] / best, rel=1e-9)
    assert 1.0 <= r["ceiling"] <= 2.0 and r["population_samples_per_s"] > 0 and n == r["members"] * r["batches"] * 20
    assert r["ceiling_one_net_KB"] == pytest.approx(r["one_net_KB_samples_per_s"] / best, rel=1e-9)


def test_stability_is_the_collapse_criterion():
    """A run is stable when it ends within 0.3 pt of its best validation error and its training loss never
    rises above 2× its minimum after reaching it (issue 14's C-VF criterion)."""
    from neurohw.population import stability

    h = lambda vals, losses: [{"val_error": v, "train_loss": l} for v, l in zip(vals, losses)]
    ok = stability(h([0.05, 0.031, 0.030, 0.0329], [0.05, 0.02, 0.015, 0.016]))
    assert ok["stable"] is True and ok["final_val_error"] == 0.0329 and ok["train_loss_min"] == 0.015
    assert stability(h([0.05, 0.030, 0.0331], [0.05, 0.015, 0.016]))["stable"] is False  # ends 0.31 pt above its best
    collapse = stability(h([0.05, 0.030, 0.031, 0.0302], [0.05, 0.015, 0.0301, 0.015]))
    assert collapse["stable"] is False and collapse["train_loss_peak_after_min"] == 0.0301  # the loss rose above 2×
    assert stability(h([0.05, 0.907], [0.05, float("nan")]))["stable"] is False
    assert stability([])["stable"] == ""


@pytest.mark.parametrize("case", ["ep_random_sign_fc", "cvf_symmetric_decay"])
def test_a_population_batch_reads_nothing_back_to_the_host(case, tmp_path, mnist_small):
    """What a CUDA graph of the population's batch needs (captured on CUDA, tests/unit/test_gpu.py): the
    batch, its signs, augmentation draws, learning rates and statistics all live on the device, indexed by
    a device counter. Planted: indexing the order by a Python batch number read from the counter, or a
    statistic read with .item() inside the batch — each is a host read here."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique"}

        def __init__(self):
            super().__init__()
            self.ops, self.reads = 0, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            if func.overloadpacket.__name__ in self.SYNCING:
                self.reads.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    card, extra = CASES[case]
    members = [Member(f"m{k}", load_config(MODELS / f"{card}.toml", BASE + extra + v), tmp_path / f"m{k}")
               for k, v in enumerate(VARIANTS)]
    pop = Population(members, splits=mnist_small, progress=False, log=None)
    pop.train_epoch(0, [True] * len(members))  # allocates the program, runs an epoch
    pop._static["counter"].zero_()
    with HostReads() as mode:
        pop._batch()
    assert mode.reads == [], f"host reads in the population's batch: {mode.reads}"
    assert mode.ops > 50
