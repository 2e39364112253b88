"""CUDA runs the same code: results equal the CPU's (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from neurohw.config import NetConfig, load_config
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
