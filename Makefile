# The two README commands: `make demo` (set up, then train/sample the tiny model on the embedded
# dataset) and `make test` (set up, then run the test suite). Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Offline, CPU-friendly defaults; override on the command line (e.g. `make demo WANDB_MODE=online`).
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export DS_ACCELERATOR ?= cpu
export WDS_SECURE ?= 1

.PHONY: setup demo test test-parity test-faults lint clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c requirements/constraints-cpu.txt -e ".[cpu,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/animatex-train demo

# Every CPU test, the slow ones included (a plain `pytest` deselects them, see setup.cfg), on TEST_WORKERS processes
# (pytest-xdist; 2 takes the suite from 25 to 16 minutes on a 2-core machine). Many tests start 2-rank fits, so more
# workers than cores only adds load. The Slurm tests share one private cluster: one worker runs them (xdist_group).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not parity_loop and not gpu and not fault_sweep" tests

# The whole official sampling loop on the parity fixture (62 forwards at 768x512: 6-18 min on 2 cores); `make test`
# checks the same loop at its first, second, middle and last steps.
test-parity: $(STAMP)
	$(BIN)/python -m pytest -q -m parity_loop tests

# Every test of the fault catalogue (docs/reliability.md, F1-F24), with the long randomised variants (`fault_sweep`:
# 50 kill-during-save trials, ...) that `make test` leaves out.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m "not parity_loop" -k "$$($(BIN)/python tests/test_fault_catalogue.py)" tests

lint: $(STAMP)
	$(BIN)/ruff check animatex_train tests benchmarks
	$(BIN)/ruff format --check animatex_train tests benchmarks

clean:
	rm -rf $(VENV) demo_run .pytest_cache
