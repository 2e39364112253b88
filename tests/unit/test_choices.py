"""Each choice list is written once (neurohw/choices.py, neurohw/spec.py, the registries) and the
implementations accept exactly its names; the tables that cannot import it are held equal to it here."""

from __future__ import annotations

import numpy as np
import pytest

from neurohw import choices
from neurohw.config import CONTINUAL, DTP_FAMILY, EP_FAMILY, LearnerConfig
from neurohw.errors import ConfigError


def test_the_learner_registry_has_exactly_the_algorithm_names():
    from neurohw.learning import LEARNERS, build_learner

    assert list(LEARNERS) == list(choices.ALGORITHMS)
    for name in choices.ALGORITHMS:
        assert build_learner(LearnerConfig(algorithm=name)) is not None
    assert set(EP_FAMILY) | set(DTP_FAMILY) | {"bptt", "bp"} == set(choices.ALGORITHMS) and set(CONTINUAL) <= set(EP_FAMILY)


def test_the_tables_beside_the_implementations_match_the_choice_lists():
    from neurohw.learning.base import PRECISIONS, operand_dtype
    from neurohw.learning.dtp import FEEDBACK_LOSSES
    from neurohw.program import CAPTURED_LEARNERS

    assert tuple(PRECISIONS) == choices.PRECISIONS
    for p in choices.PRECISIONS:
        operand_dtype(p)
    assert set(FEEDBACK_LOSSES) == set(DTP_FAMILY)
    assert set(CAPTURED_LEARNERS) == set(EP_FAMILY)


def test_the_estimators_are_those_the_learners_accept():
    from neurohw.learning import CEP, EP

    for est in choices.ESTIMATORS:
        EP(0.1, 3, 2, est)
    for est in choices.CONTINUAL_ESTIMATORS:
        CEP(0.1, 3, 2, est)
    for est in set(choices.ESTIMATORS) - set(choices.CONTINUAL_ESTIMATORS):
        with pytest.raises(ConfigError, match=est):
            CEP(0.1, 3, 2, est)


def test_the_contract_names_are_those_the_nets_and_the_reader_accept(tmp_path):
    """Every cost, nudge and pool of neurohw.spec builds a net, and a file written with it reads back."""
    import torch

    from neurohw.config import NetConfig
    from neurohw.io.hdf5 import load_spec, save_spec
    from neurohw.nets.build import build_net
    from neurohw.nets.convert import to_spec
    from neurohw.spec import COSTS, NUDGES, POOLS

    meta = dict(T_free=3, T_nudge=2, beta=0.1, image_shape=(1, 6, 6), input_mean=(0.0,), input_std=(1.0,))
    for i, (cost, nudge, pool) in enumerate(zip(COSTS * 3, NUDGES * 3, POOLS)):
        cfg = NetConfig(architecture="conv", channels=(2,), kernel_sizes=(3,), pools=(pool,), hidden=(4,), cost=cost, nudge=nudge)
        net = build_net(cfg, (1, 6, 6), 3, generator=torch.Generator().manual_seed(i))
        back = load_spec(save_spec(to_spec(net, **meta), tmp_path / f"{i}.h5"))
        assert (back.cost, back.nudge, back.layers[0].pool) == (cost, nudge, pool)
        np.testing.assert_array_equal(back.layers[0].weight, net.layers[0].weight.detach().numpy())
