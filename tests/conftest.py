"""Shared fixtures. Tests run offline (NEUROHW_OFFLINE=1) on the CPU, in float64 where they compare numbers."""

from __future__ import annotations

import os

os.environ.setdefault("NEUROHW_OFFLINE", "1")

import pytest
import torch

from neurohw.config import DataConfig
from neurohw.data import DATASETS, Split, Splits, load_splits


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def mnist_small() -> Splits:
    """The real MNIST files (data/mnist), 2,000 training and 500 validation/test samples."""
    return load_splits(DataConfig(val_size=500, limit_train=2000, limit_eval=500))


def fake_splits(name: str, n_train: int = 32, n_eval: int = 16, seed: int = 0) -> Splits:
    """Random uint8 images with the shape of dataset `name` (for cards whose data is not in the repo)."""
    info = DATASETS[name]
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, *info.input_shape), generator=g, dtype=torch.uint8)
        return Split(images, torch.randint(0, info.n_classes, (n,), generator=g))

    return Splits(info, split(n_train), split(n_eval), split(n_eval))


def one_line_error(capsys, *words: str) -> str:
    """The stderr of a failed command: one line `neurohw: error: …`, no traceback, holding every word."""
    err = capsys.readouterr().err
    assert err.startswith("neurohw: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def max_abs_diff(a, b) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a, b))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
