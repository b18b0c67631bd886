# Two entry points: `make demo` (main job on the bundled sample) and `make test`.
# Both create .venv themselves, so they work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint typecheck unit integration bench clean

$(VENV)/.installed-base: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required (found %s)" % sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	$(PY) -m pip install --quiet -e '.[test,airflow]'
	touch $@

demo: $(VENV)/.installed-base
	$(PY) -m pipelines.demo --out $(DEMO_DIR)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy schemas features pipelines jobs orchestration benchmarks

unit: $(VENV)/.installed-test
	$(PY) -m pytest -q tests/unit

integration: $(VENV)/.installed-test
	$(PY) -m pytest -q tests/integration

# Two pytest workers, a test file each (--dist loadfile keeps a file's module fixtures, such as
# its object-store servers, in one worker): tests that wait on servers, schedulers, leases
# and child processes overlap with those that compute. TF_FORCE_GPU_ALLOW_GROWTH lets the
# workers share a GPU host's device instead of the first grabbing all of its memory.
TEST_WORKERS ?= 2
test: lint $(VENV)/.installed-test
	TF_FORCE_GPU_ALLOW_GROWTH=true $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

bench: $(VENV)/.installed-base
	$(PY) -m benchmarks.extract_throughput

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench_out .pytest_cache .mypy_cache .ruff_cache
