"""CUDA runs the same code: results equal the CPU's (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from neurohw.config import NetConfig, load_config
from neurohw.errors import DivergenceError
from neurohw.learning import EP
from neurohw.nets.build import build_net
from neurohw.train import train
from tests.conftest import max_abs_diff

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_ep_estimate_on_cuda_equals_cpu(arch):
    cfg = NetConfig(hidden=(16,), activation="sigmoid4") if arch == "fc" else NetConfig(
        architecture="conv", channels=(4, 6), kernel_sizes=(3, 3), hidden=(8,), cost="ce_readout", activation="hard_sigmoid_half"
    )
    net = build_net(cfg, (1, 12, 12), 5, generator=torch.Generator().manual_seed(0)).double()
    x = torch.rand(7, *net.input_shape, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(7) % 5, 5).double()
    ep = EP(0.3, 30, 8, "symmetric")
    cpu, _ = ep.estimate(net, x, y, (-0.3, 0.3))
    gpu, _ = ep.estimate(net.cuda(), x.cuda(), y.cuda(), (-0.3, 0.3))
    assert max_abs_diff(cpu, [g.cpu() for g in gpu]) < 1e-10


def test_training_on_cuda(tmp_path, mnist_small):
    cfg = load_config(
        "models/mnist_ep_fc1.toml", ["device=cuda", "train.epochs=1", "data.limit_train=400", "data.limit_eval=200"]
    )
    summary = train(cfg, tmp_path, splits=mnist_small, progress=False, log=None)
    assert summary["device"].startswith("cuda") and summary["test_error"] < 0.5


# ------------------------------------------------------------------------------ captured updates
GRAPH_BASE = ["device=cuda", "train.epochs=2", "data.limit_train=400", "data.limit_eval=200", "data.val_size=200",
              "net.hidden=[64]", "learner.T_free=12", "learner.T_nudge=4", "learner.estimator=random-sign",
              "train.scheduler=cosine", "train.lr_min=0.01", "train.momentum=0.5"]


def _net_after(tmp_path, name, mnist_small, overrides):
    cfg = load_config("models/mnist_ep_fc1.toml", GRAPH_BASE + overrides)
    summary = train(cfg, tmp_path / name, splits=mnist_small, progress=False, log=None)
    return summary, torch.load(tmp_path / name / "checkpoint.pt", weights_only=True, map_location="cpu")["net"]


def test_graph_replay_equals_eager_over_an_epoch_boundary(tmp_path, mnist_small):
    """The captured update replayed for 2 epochs (random-sign β, cosine schedule, momentum) against the
    eager loop on the same GPU: float32 round-off only (relative 1e-5 of the largest weight). A frozen
    learning rate or sign in the graph differs by ≥ 1e-3."""
    eager, a = _net_after(tmp_path, "eager", mnist_small, ["train.cuda_graphs=false"])
    graph, b = _net_after(tmp_path, "graph", mnist_small, ["train.cuda_graphs=true"])
    assert eager["update"] == "eager" and graph["update"] == "cuda graph"
    scale = max(float(t.abs().max()) for t in a.values())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5 * scale
    assert eager["final"]["lrs"] == graph["final"]["lrs"]


def test_a_captured_update_never_synchronises(tmp_path, mnist_small):
    """torch's sync debug mode raises on any host synchronisation inside the replayed updates."""
    from neurohw.program import draw_epoch
    from neurohw.train import Trainer

    cfg = load_config("models/mnist_ep_fc1.toml", GRAPH_BASE + ["train.cuda_graphs=true"])
    tr = Trainer(cfg, tmp_path, resume=False, overwrite=False, data_dir=None, splits=mnist_small, progress=False, log=None)
    prog = tr.program
    prog.begin_epoch(draw_epoch(len(tr.train_split), prog.n_batches, prog.batch, tr.shuffle_gen, tr.augment_gen,
                                prog.padding, tr.learner.sampler))
    tr._capture()
    assert prog.graph is not None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            prog()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert prog.stats()[1] >= 0


def test_a_divergence_under_graphs_names_phase_and_step(tmp_path, mnist_small):
    cfg = load_config("models/mnist_ep_fc1.toml", [
        "device=cuda", "train.epochs=1", "data.limit_train=400", "data.limit_eval=100", "net.hidden=[24]",
        "net.activation=identity", "train.lrs=[3.0]", "train.scheduler=none", "train.cuda_graphs=true"])
    with pytest.raises(DivergenceError) as e:
        train(cfg, tmp_path, splits=mnist_small, progress=False, log=None)
    msg = str(e.value)
    assert msg.startswith("epoch 1, batch ") and "at step" in msg and "phase" in msg and "layer" in msg


@pytest.mark.parametrize("arch", ["fc1", "conv"])
def test_bf16_and_tf32_operands_on_the_gpu(arch, mnist_small):
    """Δθ of one batch with TF32 and bf16 operands against fp32 on the GPU, per parameter tensor; fc1 must
    stay ≥ 0.99 (the issue's target). The conv card's figures are printed for docs/results.md (the CPU
    emulation measured 0.81–1.00 for bf16): they are recorded, not asserted beyond a floor of 0.5."""
    from tests.unit.test_precision import NETS, _cosines

    cfg, shape, beta = NETS[arch]
    net = build_net(cfg, shape, 10, generator=torch.Generator().manual_seed(0)).cuda()
    x = mnist_small.train.images[:20].float().div(255.0).cuda()
    if arch == "fc1":
        x = x.flatten(1)
    y = torch.nn.functional.one_hot(mnist_small.train.labels[:20], 10).float().cuda()
    T = (30, 10) if arch == "fc1" else (200, 10)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    full, _ = EP(beta, *T).estimate(net, x, y, (0.0, beta))
    low, _ = EP(beta, *T, precision="bf16").estimate(net, x, y, (0.0, beta))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    tf32, _ = EP(beta, *T).estimate(net, x, y, (0.0, beta))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    cos_bf16, cos_tf32 = _cosines(full, low), _cosines(full, tf32)
    print(f"\n{arch}: cosine to fp32, bf16 operands {[round(c, 4) for c in cos_bf16]}, tf32 {[round(c, 4) for c in cos_tf32]}")
    floor = 0.99 if arch == "fc1" else 0.5
    assert min(cos_bf16) > floor and min(cos_tf32) > floor


def test_population_graph_replay_equals_its_eager_batches(tmp_path, mnist_small):
    """A population of 3 fc members (random-sign β, cosine schedule, momentum, own seeds and β) captured as
    one CUDA graph per batch and replayed for 2 epochs against the same population's eager batches on the
    same GPU: float32 round-off only. A frozen learning rate or sign in the graph differs by ≥ 1e-3."""
    from neurohw.population import sweep

    items = ["seed=0,1,2", "learner.beta=0.1,0.2", *GRAPH_BASE]
    rows = {}
    for mode in ("false", "true"):
        rows[mode] = sweep("models/mnist_ep_fc1.toml", [*items, f"train.cuda_graphs={mode}"], tmp_path / mode,
                           splits=mnist_small, progress=False, log=None)
    import json

    for r in rows["true"]:
        assert json.loads((tmp_path / "true" / r["dir"] / "summary.json").read_text())["update"] == "population (cuda graph)"
        a = torch.load(tmp_path / "false" / r["dir"] / "checkpoint.pt", weights_only=True, map_location="cpu")["net"]
        b = torch.load(tmp_path / "true" / r["dir"] / "checkpoint.pt", weights_only=True, map_location="cpu")["net"]
        scale = max(float(t.abs().max()) for t in a.values())
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5 * scale, r["member"]
