# Set-up commands from the README: `make run` and `make test` work on a fresh machine with
# Python 3.11+ and pip; everything else they need they install into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test lint bench bench-peers profile fuzz dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/steward init --quiet-if-exists
	$(BIN)/steward run

# A test mostly waits on the steward processes it starts, so one pytest keeps one core busy:
# pytest-xdist runs the files on every core, a whole file per worker (its module fixtures and
# its order hold). Tests marked `alone` assert on latency and run afterwards, by themselves.
test: $(VENV)/.installed-test
	$(BIN)/ruff check steward cli tests bench packaging
	$(BIN)/pytest -n auto --dist loadfile -m "not alone"
	$(BIN)/pytest -m alone

lint: $(VENV)/.installed-test
	$(BIN)/ruff check steward cli tests bench packaging

# Every row the README reports, in one sitting. BENCH_DURATION (seconds per cell, default 5)
# and BENCH_ARGS pass through, e.g. make bench BENCH_ARGS="--config bodies-off".
BENCH_ARGS ?=
bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Where a pinned worker's CPU goes, per request, by pipeline stage and by component (py-spy).
# PROFILE_ARGS pass through, e.g. make profile PROFILE_ARGS="--config bodies-off --stream".
PROFILE_ARGS ?=
profile: $(VENV)/.installed-test
	$(PIP) install py-spy==0.4.2
	$(BIN)/python bench/profile.py $(PROFILE_ARGS)

# The same cells through LiteLLM's proxy, pinned version, in its own virtualenv (never .venv).
LITELLM_VERSION ?= 1.108.7
LITELLM_VENV := .bench/litellm-$(LITELLM_VERSION)
$(LITELLM_VENV)/.installed:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip --disable-pip-version-check -q install \
		'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

bench-peers: $(VENV)/.installed-test $(LITELLM_VENV)/.installed
	$(BIN)/python bench/run.py --peers $(LITELLM_VENV)/bin/litellm $(BENCH_ARGS)

# Coverage-guided fuzzing of the stream parsers and meters, bounded in time; findings are
# written to .fuzz-artifacts/ and the corpus grows in .fuzz-corpus/ between runs.
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.installed-test
	mkdir -p .fuzz-artifacts
	$(BIN)/python tests/fuzz/fuzz_parsers.py -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=.fuzz-artifacts/

# One self-contained file: a shiv zipapp of Steward and its pinned dependencies. It needs only
# the matching Python (3.11+) on the target; it unpacks once into $SHIV_ROOT (~/.shiv).
dist: $(VENV)/.installed
	$(PIP) install shiv==1.0.8
	mkdir -p dist
	$(BIN)/shiv --console-script steward --output-file dist/steward --reproducible \
		--compile-pyc . --constraint constraints.txt --quiet
	@ls -l dist/steward

clean:
	rm -rf $(VENV) .bench build *.egg-info .pytest_cache .ruff_cache .hypothesis .fuzz-corpus .fuzz-artifacts
