"""Golden training updates: small float64 cases of every EP-family learner, run for a few batches.

`tests/data/golden_8e027bf.pt` holds what the engine of commit 8e027bf computed for each case (before
the hot loop was rewritten for the GPU); tests/equivalence/test_golden.py checks that today's eager
update gives the same numbers bit for bit. The file was written by

    PYTHONPATH=<a checkout of 8e027bf> python tests/golden.py tests/data/golden_8e027bf.pt

and must never be regenerated from a later commit (it would then pin nothing). The cases use only
the public API that both versions share: build_net, the learners' constructors, step and estimate.
"""

from __future__ import annotations

import sys

import torch

from neurohw.config import NetConfig
from neurohw.learning import CEP, CVF, EP, set_initial_angle
from neurohw.nets.build import build_net

# name → (NetConfig, input shape, classes, untied)
NETS = {
    "fc_mse_out": (NetConfig(hidden=(12, 7), activation="sigmoid4", nudge="outside"), (1, 3, 3), 4, False),
    "fc_mse_in": (NetConfig(hidden=(12, 7), activation="tanh", nudge="inside"), (1, 3, 3), 4, False),
    "fc_ce": (NetConfig(hidden=(10, 8), activation="hard_sigmoid", cost="ce_readout"), (1, 3, 3), 4, False),
    "conv_mse": (NetConfig(architecture="conv", channels=(3,), kernel_sizes=(3,), hidden=(6,), activation="sigmoid4",
                           nudge="outside"), (1, 8, 8), 4, False),
    "conv_ce": (NetConfig(architecture="conv", channels=(3, 4), kernel_sizes=(3, 2), pools=("max2", "none"), hidden=(),
                          activation="hard_sigmoid_half", cost="ce_readout"), (1, 10, 10), 4, False),
    "fc_untied": (NetConfig(hidden=(12, 7), activation="sigmoid4", nudge="outside"), (1, 3, 3), 4, True),
}

# name → (net, learner factory, SGD lr, momentum)
CASES = {
    "ep_one_sided_fc_mse_out": ("fc_mse_out", lambda: EP(0.3, 25, 6, "one-sided"), 0.05, 0.0),
    "ep_random_sign_fc_mse_out": ("fc_mse_out", lambda: EP(0.3, 25, 6, "random-sign", seed=3), 0.05, 0.9),
    "ep_symmetric_fc_mse_in": ("fc_mse_in", lambda: EP(0.3, 25, 6, "symmetric"), 0.05, 0.0),
    "ep_one_sided_fc_ce": ("fc_ce", lambda: EP(0.3, 25, 6, "one-sided"), 0.05, 0.0),
    "ep_random_sign_fc_ce": ("fc_ce", lambda: EP(0.3, 25, 6, "random-sign", seed=1), 0.05, 0.0),
    "ep_symmetric_fc_ce": ("fc_ce", lambda: EP(0.3, 25, 6, "symmetric"), 0.05, 0.9),
    "ep_one_sided_conv_mse": ("conv_mse", lambda: EP(0.3, 20, 5, "one-sided"), 0.05, 0.0),
    "ep_random_sign_conv_ce": ("conv_ce", lambda: EP(0.3, 20, 5, "random-sign", seed=2), 0.05, 0.0),
    "ep_symmetric_conv_ce": ("conv_ce", lambda: EP(0.3, 20, 5, "symmetric"), 0.05, 0.0),
    "cep_one_sided_fc_mse_out": ("fc_mse_out", lambda: CEP(0.3, 25, 6, "one-sided"), 0.02, 0.0),
    "cep_random_sign_fc_ce": ("fc_ce", lambda: CEP(0.3, 25, 6, "random-sign", seed=1), 0.02, 0.0),
    "cep_random_sign_conv_mse": ("conv_mse", lambda: CEP(0.3, 20, 5, "random-sign", seed=4), 0.02, 0.0),
    "cvf_activity_fc_untied": ("fc_untied", lambda: CVF(0.3, 25, 6, "random-sign", seed=1), 0.02, 0.0),
    "cvf_vector_field_fc_untied": ("fc_untied", lambda: CVF(0.3, 25, 6, "one-sided", rule="vector-field"), 0.02, 0.0),
}
BATCHES, BATCH_SIZE = 3, 5


def make_net(name: str):
    cfg, shape, classes, untied = NETS[name]
    g = torch.Generator().manual_seed(7)
    net = build_net(cfg, shape, classes, untied=untied, generator=g)
    if untied:
        set_initial_angle(net, 30.0, g)
    net = net.double()
    x = torch.rand(BATCHES, BATCH_SIZE, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, classes, (BATCHES, BATCH_SIZE), generator=g), classes).double()
    return net, x, y


def run_case(name: str) -> dict[str, torch.Tensor]:
    """Every number the case produces: per batch the batch statistics, the parameters after the update
    and (EP) the .grad written; for EP also the estimate and the free state of the first batch."""
    net_name, factory, lr, momentum = CASES[name]
    net, x, y = make_net(net_name)
    learner = factory()
    out: dict[str, torch.Tensor] = {}
    if isinstance(learner, EP):
        betas = (-0.3, 0.3) if learner.sampler.estimator == "symmetric" else (0.0, 0.3)
        delta, s_free = learner.estimate(net, x[0], y[0], betas)
        out.update({f"estimate/{i}": d for i, d in enumerate(delta)})
        out.update({f"s_free/{i}": s for i, s in enumerate(s_free)})
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for b in range(BATCHES):
        stats = learner.step(net, x[b], y[b], opt.step)
        out[f"batch{b}/loss"] = stats["loss"].detach().clone()
        out[f"batch{b}/correct"] = stats["correct"].detach().clone()
        for i, p in enumerate(net.param_list()):
            out[f"batch{b}/param/{i}"] = p.detach().clone()
            if isinstance(learner, EP):
                out[f"batch{b}/grad/{i}"] = p.grad.detach().clone()
    return out


def main(path: str) -> None:
    import neurohw

    data = {name: run_case(name) for name in CASES}
    torch.save({"neurohw_file": neurohw.__file__, "torch": str(torch.__version__), "cases": data}, path)
    print(f"wrote {path}: {len(data)} cases with neurohw from {neurohw.__file__}")


if __name__ == "__main__":
    main(sys.argv[1])
