"""The static update (neurohw/program.py): what CUDA graphs capture, tested eagerly on the CPU.

The program must compute what the eager reference loop computes (same batches, augmentation draws,
signs of β, learning rates per epoch, C-EP decay), and must read nothing back to the host during an
update (else it cannot be captured, and on a GPU every read is a round trip).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from neurohw.config import load_config
from neurohw.errors import ConfigError, DivergenceError
from neurohw.program import draw_epoch
from neurohw.train import Trainer, train

MODELS = Path(__file__).resolve().parents[2] / "models"
BASE = ["train.epochs=2", "data.limit_train=300", "data.limit_eval=60", "data.val_size=60", "learner.T_free=8",
        "learner.T_nudge=4", "device=cpu", "dtype=float64", "train.scheduler=cosine", "train.lr_min=0.01"]

CASES = {
    "ep_one_sided_fc": ("mnist_ep_fc1", ["net.hidden=[24]"]),
    "ep_random_sign_fc_augment": ("mnist_ep_fc1", ["net.hidden=[24]", "learner.estimator=random-sign", "data.augment=true",
                                                  "data.crop_padding=2", "train.momentum=0.9"]),
    "ep_symmetric_ce": ("mnist_ep_fc1", ["net.hidden=[16, 12]", "net.cost=ce_readout", "learner.estimator=symmetric",
                                        "train.lrs=[0.05]", "train.weight_decay=1e-3"]),
    "ep_conv": ("mnist_ep_conv", ["net.channels=[4, 6]", "net.kernel_sizes=[5, 3]", "train.batch_size=20"]),
    "cep_random_sign_decay": ("mnist_cep_fc1", ["net.hidden=[24]", "train.weight_decay=1e-2", "train.momentum=0.5",
                                                "train.lrs=[0.02, 0.01]"]),
    "cvf_random_sign": ("mnist_cvf_fc1", ["net.hidden=[24]", "train.lrs=[0.02, 0.01]"]),
    "cvf_symmetric_decay": ("mnist_cvf_fc1", ["net.hidden=[24]", "train.lrs=[0.02, 0.01]", "learner.estimator=symmetric",
                                              "train.weight_decay=1e-2"]),
    "cvf_vector_field": ("mnist_cvf_fc1", ["net.hidden=[24]", "learner.estimator=one-sided", "learner.vf_rule=vector-field",
                                           "train.lrs=[0.02, 0.01]"]),
    "ep_async_random_sign": ("mnist_ep_fc1", ["net.hidden=[24, 16]", "learner.relaxation=async",
                                              "learner.estimator=random-sign", "train.lrs=[0.08, 0.04, 0.02]"]),
    "ep_async_conv": ("mnist_ep_conv", ["net.channels=[4, 6]", "net.kernel_sizes=[5, 3]", "learner.relaxation=async"]),
    "cep_async": ("mnist_cep_fc1", ["net.hidden=[24, 16]", "learner.relaxation=async", "train.lrs=[0.02]"]),
}


def _run(card, extra, out, splits, program):
    cfg = load_config(MODELS / f"{card}.toml", BASE + extra)
    summary = train(cfg, out, splits=splits, progress=False, log=None, use_program=program)
    net = torch.load(out / "checkpoint.pt", weights_only=True)["net"]
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, net, lines


@pytest.mark.parametrize("case", list(CASES))
def test_program_trains_as_the_eager_loop_over_an_epoch_boundary(case, tmp_path, mnist_small):
    """Two epochs of a cosine schedule (the learning rates change at the boundary), with random-sign β,
    augmentation, momentum and C-EP's decay in the cases that have them: the program's weights equal the
    eager loop's to float64 round-off. Planted: rates not copied to the device at the new epoch
    (frozen lr), signs not uploaded (all +1), or the C-EP decay factors frozen — each differs by ≥ 1e-4."""
    card, extra = CASES[case]
    eager, net_e, lines_e = _run(card, extra, tmp_path / "eager", mnist_small, False)
    prog, net_p, lines_p = _run(card, extra, tmp_path / "program", mnist_small, True)
    assert eager["update"] == "eager" and prog["update"] == "program"
    scale = max(float(t.abs().max()) for t in net_e.values())
    assert max(float((net_e[k] - net_p[k]).abs().max()) for k in net_e) <= 1e-12 * scale
    for a, b in zip(lines_e, lines_p):
        assert a["lrs"] == b["lrs"] and a["train_error"] == b["train_error"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)


class _HostReads(TorchDispatchMode):
    """Counts the operators an update dispatches and records those that read a tensor's value back to
    the host (`.item()`, `bool(t)`, data-dependent shapes): a captured graph can contain none."""

    SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique"}

    def __init__(self):
        super().__init__()
        self.ops, self.reads = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops += 1
        if name in self.SYNCING:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["ep_one_sided_fc", "ep_random_sign_fc_augment", "ep_symmetric_ce", "ep_conv",
                                  "cep_random_sign_decay", "cvf_random_sign", "cvf_symmetric_decay"])
def test_the_update_reads_nothing_back_to_the_host(case, tmp_path, mnist_small):
    """Planted: a Python `if` on a tensor β, `.item()` of the sign, F.one_hot's range check, or the
    eager non-finite check inside the update: each shows up here as a host read."""
    card, extra = CASES[case]
    cfg = load_config(MODELS / f"{card}.toml", BASE + extra)
    trainer = Trainer(cfg, tmp_path, resume=False, overwrite=False, data_dir=None, splits=mnist_small, progress=False,
                      log=None, use_program=True)
    prog = trainer.program
    prog.begin_epoch(draw_epoch(len(trainer.train_split), prog.n_batches, prog.batch, trainer.shuffle_gen,
                                trainer.augment_gen, prog.padding, trainer.learner.sampler))
    prog.run()  # first run: lazy initialisations are not part of an update
    with _HostReads() as mode:
        prog.run()
    assert mode.reads == [], f"host reads in the update: {mode.reads}"
    assert mode.ops > 50  # the update really ran under the mode


def test_a_divergence_in_the_program_is_named_like_the_eager_one(tmp_path, mnist_small):
    """Flags set on the device are read once per check; the eager replay from the last clean check then
    names the phase, layer and step — the same words as the eager loop, plus the batch."""
    extra = ["net.hidden=[24]", "net.activation=identity", "train.lrs=[3.0]", "train.scheduler=none", "train.epochs=1"]
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", [b for b in BASE if "lr_min" not in b] + extra)
    with pytest.raises(DivergenceError) as eager:
        train(cfg, tmp_path / "e", splits=mnist_small, progress=False, log=None)
    with pytest.raises(DivergenceError) as prog:
        train(cfg, tmp_path / "p", splits=mnist_small, progress=False, log=None, use_program=True)
    e, p = str(eager.value), str(prog.value)
    assert p.startswith("epoch 1, batch ") and p.split(": ", 1)[1] == e
    assert "at step" in e and "phase" in e and "layer" in e


def test_cuda_graphs_option_is_checked(tmp_path, mnist_small):
    with pytest.raises(ConfigError, match=r"train.cuda_graphs = true needs a CUDA device"):
        Trainer(load_config(MODELS / "mnist_ep_fc1.toml", BASE + ["train.cuda_graphs=true"]), tmp_path, resume=False,
                overwrite=False, data_dir=None, splits=mnist_small, progress=False, log=None)
    said = []
    bptt = [b for b in BASE if "T_nudge" not in b] + ["learner.algorithm=bptt"]
    t = Trainer(load_config(MODELS / "mnist_ep_fc1.toml", bptt), tmp_path / "b", resume=False,
                overwrite=False, data_dir=None, splits=mnist_small, progress=False, log=said.append, use_program=True)
    assert t.program is None and any("'bptt' has no captured update" in s for s in said)
    adam = load_config(MODELS / "mnist_ep_fc1.toml", BASE + ["train.optimizer=adam", "train.lrs=[0.001]"])
    said.clear()
    t = Trainer(adam, tmp_path / "a", resume=False, overwrite=False, data_dir=None, splits=mnist_small, progress=False,
                log=said.append, use_program=True)
    assert t.program is None and any("'adam' has no captured update" in s for s in said)
    assert load_config(None, ["train.cuda_graphs=false"]).train.cuda_graphs == "false"  # a TOML boolean is accepted
    with pytest.raises(ConfigError, match="train.cuda_graphs"):
        load_config(None, ["train.cuda_graphs=maybe"])


def test_bench_card_times_every_variant_and_counts_the_work(capsys, tmp_path):
    """`neurohw bench --card`: the variants side by side, the kernels and host reads of one update (the
    program reads nothing back; the eager loop checks each phase on the host), the products' FLOPs."""
    from neurohw.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--card", str(MODELS / "mnist_ep_fc1.toml"), "--batches", "2", "learner.T_free=6",
                 "learner.T_nudge=3", "net.hidden=[32]", "--epoch-samples", "200", "data.val_size=100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert [v["variant"] for v in r["variants"]] == ["eager", "program", "program/bf16"]
    assert all(v["samples_per_s"] > 0 for v in r["variants"]) and "eager" in text and r["torch"]
    pu = r["per_update"]
    assert pu["program"]["host_reads"] == 0 and pu["eager"]["host_reads"] == 2  # the free and the nudged phase
    # closed-form count for a 784-32-10 net at B = 20, T 6/3 (docs/math.md eq. fold, chains): the input drive
    # 2·B·784·32; the free phase as two chains on 2B rows: a prelude of one layer on B rows, then 6 steps of
    # one layer on 2B rows (2·B·32·10 multiply-adds each); 3 nudged steps of both layers on B rows; the
    # contrast: Δs_1ᵀx (2·B·784·32) and two products for W_1 (2 × 2·B·32·10)
    B, unit = 20, 2 * 20 * 32 * 10
    assert pu["flops"] == 2 * B * 784 * 32 + (unit + 6 * 2 * unit) + 3 * 2 * unit + 2 * B * 784 * 32 + 2 * unit
    assert r["epoch"]["train_samples"] == 200 and r["epoch"]["eval_samples"] == 100 + 10_000


def test_bench_refuses_what_it_does_not_use(capsys):
    from neurohw.cli import main

    for argv, words in (
        (["bench", "--card", str(MODELS / "mnist_dtp_mlp.toml")], "learner.algorithm = 'ldrl'"),
        (["bench", "--card", str(MODELS / "mnist_ep_fc1.toml"), "--sim", "sims/ideal.toml"], "--sim"),
        (["bench", "train.epochs=2"], "belong to --card"),
        (["bench", "--device", "cuda"] if not torch.cuda.is_available() else ["bench", "--device", "cuda:99"], "cuda"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("neurohw: error:") and words in err and "Traceback" not in err


def test_compiled_update_equals_the_eager_update(tmp_path, mnist_small):
    """train.compile = true: the whole update through torch.compile with fullgraph (so it also proves the
    update has no graph break: nothing a CUDA graph could not hold), random-sign β and momentum, float64:
    the weights after an epoch equal the eager program's to 1e-12 relative (fusion reorders roundings).
    Compiling takes a minute or two on the CPU."""
    extra = ["net.hidden=[16]", "learner.T_free=4", "learner.T_nudge=2", "learner.estimator=random-sign",
             "train.momentum=0.5", "train.epochs=1", "data.limit_train=100"]
    _, net_e, lines_e = _run("mnist_ep_fc1", extra, tmp_path / "e", mnist_small, True)
    summary, net_c, lines_c = _run("mnist_ep_fc1", extra + ["train.compile=true"], tmp_path / "c", mnist_small, False)
    assert summary["update"] == "program"
    scale = max(float(t.abs().max()) for t in net_e.values())
    assert max(float((net_e[k] - net_c[k]).abs().max()) for k in net_e) <= 1e-12 * scale
    assert lines_c[0]["train_error"] == lines_e[0]["train_error"]
