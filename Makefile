# Two commands set up everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned, so a CPU machine never pulls a multi-GB CUDA build.
# On a CUDA machine: `make install TORCH=torch`.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast lint format bench bench-quality mutation tensorboard clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev,baselines,ray,lightning,transformers]"
	touch $@

# Meta-trains a smoke pilot (seconds), then shows the shipped pilot against constant Adam
# and tuned cosine on a val-split task, never a held-out one (runs/demo-eval is the
# demo's own, redone each time, so it also runs after a shipped pilot with another K).
demo: install
	$(VENV)/bin/hyperpilot train --config smoke
	rm -rf runs/demo-eval
	$(VENV)/bin/hyperpilot evaluate --pilot default --family mlp_wine \
		--seeds 1 --methods pilot,constant,tuned_cosine --out runs/demo-eval --no-progress

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-quality: install
	$(PY) scripts/bench.py quality

bench: install
	$(PY) scripts/bench.py throughput --compiled

# Mutation check of the math modules (not part of `test`: about 16 min on 2 cores).
# Rewrites docs/MUTATION.md; see there.
mutation: install
	nice -n 10 $(PY) scripts/mutation.py

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
