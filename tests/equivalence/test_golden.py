"""Today's eager update equals the engine of 8e027bf bit for bit (float64, CPU): tests/golden.py.

The hot loop was rewritten for the GPU after 8e027bf (one closed-form step, device-tensor scalars,
graph capture); the eager path is the reference every other path is tested against, so it must
compute exactly what the old engine computed: the same operations in the same order. A reordered
sum, a stale input drive or a lost sign changes the bits and fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.golden import CASES, run_case

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_8e027bf.pt"


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)["cases"]


@pytest.mark.parametrize("name", list(CASES))
def test_eager_update_equals_8e027bf_bit_for_bit(name, golden):
    ours, theirs = run_case(name), golden[name]
    assert ours.keys() == theirs.keys()
    different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    worst = max((float((ours[k] - theirs[k]).abs().max()) for k in different), default=0.0)
    assert not different, f"{len(different)} of {len(ours)} tensors differ (first {different[0]}, max |Δ| {worst:.3e})"
