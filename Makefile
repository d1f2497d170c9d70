# Every target sets itself up: a fresh clone needs only python3 (3.11+) and, for the SLURM tests,
# root to install Debian's slurm-wlm and munge.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo reference transfer-demo bench clean

install: $(STAMP)

# constraints.txt pins every package (torch 2.14.1 with torchvision 0.29.1 among them), so every
# install resolves to the same, tested set.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt -e ".[dev]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The launcher tests run a real single-node SLURM cluster (Debian's slurm-wlm and munge).
test: lint
	bash scripts/install_slurm.sh
	$(BIN)/python -m pytest

# The 3×3 grid of {sgd, adam, adagrad} on the bundled digits, 5 seeds per pair (45 runs of one
# thread; conf/experiment/demo.yaml): it ends with the table of its primary metric, the test loss
# (sweep.metrics), with its CIs, the ANOVA and the clustering of the training curves.
demo: install
	$(BIN)/graftbench sweep experiment=demo

# A fresh demo run into results/reference-runs/, then results/reference/demo/ (tables, runs,
# figures) and README.md's demo section regenerated from it (scripts/reference.py).
reference: install
	$(BIN)/python scripts/reference.py

# Schedule transfer on the bundled digits: graft adagrad#sgd, transfer its per-layer implicit
# schedule, train sgd alone with it, and compare (table --transfer, figures): a few minutes.
transfer-demo: install
	GRAFTBENCH=$(BIN)/graftbench bash scripts/transfer_demo.sh

bench: install
	$(BIN)/python scripts/bench_optim.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
