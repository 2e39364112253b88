# Two commands do all set-up on a fresh CPU-only machine (no internet but the package registries):
#   make demo   creates .venv, trains the default card (mnist_ep_fc1) for one epoch, prints the test error,
#               exports the net mapped onto a ReRAM-like device profile, prints its summary, and simulates it
#               on the analog crossbar substrate (1,000 test images) and on Brian2 rate neurons (200 images)
#   make test   creates .venv, runs the tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch and torchvision builds that this machine kind serves from local disk (see docs/setup.md); the package and
# its extras (nir: snnTorch, nirtorch) install under them as constraints (.venv/constraints.txt)
ifeq ($(shell uname -m),aarch64)
TORCH  := torch==2.9.1 torchvision==0.24.1
else
TORCH  := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test venv clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	printf '%s\n' $(TORCH) > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -e '.[test,nir]' -c $(VENV)/constraints.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m neurohw train models/mnist_ep_fc1.toml train.epochs=1 --out runs/demo --overwrite
	$(PY) -m neurohw export runs/demo --device sims/reram_64levels.toml --out runs/demo/network.h5 --overwrite
	$(PY) -m neurohw simulate runs/demo/network.h5 --substrate analog --sim sims/ideal.toml --n 1000 --out runs/demo/report_analog.json
	$(PY) -m neurohw simulate runs/demo/network.h5 --substrate brian2 --sim sims/brian2_rate.toml --n 200 --out runs/demo/report_brian2.json

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
