"""The names a training option may take, one tuple per idea, torch-free.

The config checks (config.py) and the modules that implement the options (learning/, train.py, the
in-situ trainer) import them from here, so that an option's valid names are written once. The names a
network file may hold (architectures, layer types, costs, nudges, pools, relaxations) are the weight
contract's and live in neurohw/spec.py; the activations are the registry of neurohw/core/activations.py.
tests/unit/test_choices.py checks that the implementations accept exactly these names.
"""

from __future__ import annotations

ALGORITHMS = ("ep", "cep", "cvf", "bptt", "bp", "dtp", "drl", "ldrl")  # learning/__init__.py LEARNERS
ESTIMATORS = ("one-sided", "random-sign", "symmetric")  # EP's gradient estimators (docs/math.md §EP)
CONTINUAL_ESTIMATORS = ("one-sided", "random-sign", "symmetric")  # those of C-EP and C-VF (symmetric: two nudged phases)
VF_RULES = ("activity", "vector-field")  # C-VF's per-step update (eq. C-VF, C-VF-vf)
FB_POOL_INDICES = ("noisy", "clean")  # DTP: max-pool indices of the feedback loss (eq. DTP-pool); default first
PRECISIONS = ("fp32", "tf32", "bf16")  # operands of the dynamics' products (eq. precision)
OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("none", "cosine")  # learning-rate schedules
CUDA_GRAPHS = ("auto", "true", "false")
DTYPES = ("float32", "float64")
# data.dataset: the named datasets of data.DATASETS, then the user's files (neurohw/datasets/files.py)
DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagenet32", "arrays", "folder")
