# Set-up and the commands users run: `make demo`, `make test` (what CI runs), `make test-fast`.
# The environment lives in .venv and is rebuilt when a requirement file or setup.py changes
# (the stamp file below); a second run installs nothing.
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --no-cache-dir
# The x86_64 torch wheels on PyPI are CUDA builds: the environment takes about 6.5 GB, and the
# test suite writes about 4 GB of checkpoints under the temp folder while it runs.
MIN_FREE_GB ?= 10
ARCH := $(shell uname -m)
TORCH_REQS := requirements-torch-$(ARCH).txt
D2_DIR := $(VENV)/detectron2-py310
STAMP := $(VENV)/.rpanoptic-stamp
DEMO_ARGS ?=
COMPARE_ARGS ?=
PATHFINDER_ARGS ?=
DEMO_RECURRENCE_ARGS ?=

.PHONY: env demo demo-curves compare demo-recurrence pathfinder pathfinder-regime test test-fast bench lint clean-env

env: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-detectron2.txt $(TORCH_REQS) setup.py
	@test -f $(TORCH_REQS) || { echo "No torch pin for architecture $(ARCH): add $(TORCH_REQS)"; exit 1; }
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	if [ "$$free" -lt "$(MIN_FREE_GB)" ]; then \
		echo "Only $$free GB free on the disk holding $(CURDIR); the environment and the tests need"; \
		echo "about $(MIN_FREE_GB) GB. Free space (old output/ checkpoints, /tmp/pytest-of-$$(id -un)) or set"; \
		echo "MIN_FREE_GB=<GB> to try anyway."; exit 1; fi
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q -r $(TORCH_REQS)
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	# detectron2: pure-Python wheel for cp310, used on this Python (see README / DESIGN.md)
	rm -rf $(D2_DIR)
	$(PIP) install -q --no-deps --only-binary=:all: --python-version 3.10 --target $(D2_DIR) \
		-r requirements-detectron2.txt
	rm -rf $(D2_DIR)/tools $(D2_DIR)/bin
	rm -f $(D2_DIR)/detectron2/_C*.so
	$(PY) -c "import site,os; open(os.path.join(site.getsitepackages()[0],'rpanoptic-detectron2.pth'),'w').write(os.path.abspath('$(D2_DIR)')+'\n')"
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -m rpanoptic.env
	touch $(STAMP)

# Everything: the package's tests (tests/) and the projects' (projects/*/tests).
test: $(STAMP)
	$(PY) -m pytest -q

# For daily work: leaves out the tests marked slow or distributed (under 2 minutes on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not distributed"

# The demo: make the synthetic enclosure dataset if missing, train a small C-RBP recurrent
# Panoptic FPN on the CPU, evaluate PQ and the closure scores, sweep inference steps; results in
# output/demo. E.g. DEMO_ARGS="--iters 200". demo-curves: the same on the curve scenes.
demo: $(STAMP)
	$(PY) tools/demo.py $(DEMO_ARGS)

demo-curves: $(STAMP)
	$(PY) tools/demo.py --kind curves $(DEMO_ARGS)

# Longer, not in CI (projects/SyntheticComparison): feed-forward vs RFPN (BPTT, C-RBP) vs recurrent
# mask head, 3 seeds each, same schedule; one result file per run in
# projects/SyntheticComparison/results/compare. Rerun to resume. E.g. COMPARE_ARGS="--seeds 0,1,2,3,4".
compare: $(STAMP)
	$(PY) projects/SyntheticComparison/compare.py $(COMPARE_ARGS)

# The recurrence engine's own toy demo (projects/CurveTracing: BPTT vs C-RBP on curve tracing).
demo-recurrence: $(STAMP)
	$(PY) projects/CurveTracing/demo.py $(DEMO_RECURRENCE_ARGS)

# Longer, not in CI (projects/Pathfinder): feed-forward vs hGRU BPTT / RBP / C-RBP, 3 seeds, one
# result file per run in projects/Pathfinder/results/compare (rerun to resume).
# E.g. PATHFINDER_ARGS="--sets easy,medium".
pathfinder: $(STAMP)
	$(PY) projects/Pathfinder/compare.py $(PATHFINDER_ARGS)

# Longer, not in CI (projects/Pathfinder, several sessions): the paper's regime (BPTT at the N its
# memory allows vs C-RBP at 4x the minimum steps; zero-shot to longer paths). Rerun to resume.
pathfinder-regime: $(STAMP)
	$(PY) projects/Pathfinder/regime.py $(PATHFINDER_ARGS)

bench: $(STAMP)
	$(PY) tools/benchmark.py engine

# The cost table of each configuration against the feed-forward model (docs/BENCHMARKS.md, "What
# each configuration costs"): on CPU, FLOPs, kernels and memory counted at 800 px and step-time
# ratios at 256 px (about an hour on 2 busy cores); `make cost-gpu` fills the GPU rows (800 px:
# time and peak memory uncapped, under a 16 GB cap, and with AMP; under 10 minutes on one GPU).
COST_ARGS ?=
.PHONY: cost cost-gpu
cost: $(STAMP)
	$(PY) tools/benchmark.py cost --threads 1 --output-dir output/benchmark_cost $(COST_ARGS)

COST_GPU := $(PY) tools/benchmark.py cost --device cuda --image-size 800 --batch 2 \
	--count-size 0 --rounds 1 --iters 3 --only ff,rfpn_crbp20_p2-p5_w256_output_dbwd,rfpn_crbp20_p2-p5_w256_output,rfpn_crbp20_default,rfpn_bptt3_default,rmask_crbp20
cost-gpu: $(STAMP)
	timeout 200 $(COST_GPU) --output-dir output/benchmark_cost_gpu $(COST_ARGS)
	timeout 200 $(COST_GPU) --memory-cap-gb 16 --output-dir output/benchmark_cost_gpu_cap16 $(COST_ARGS)
	timeout 200 $(COST_GPU) --amp --output-dir output/benchmark_cost_gpu_amp $(COST_ARGS)

# docs/CONFIG.md, the config key reference, regenerated from the code (rpanoptic/config.py's
# comments and the keys' rules); tests/modeling/test_config_reference.py fails while it is stale.
.PHONY: config-doc
config-doc: $(STAMP)
	$(PY) -m rpanoptic.modeling.config_reference --output docs/CONFIG.md

LINTED := rpanoptic tests tools datasets projects configs conftest.py setup.py

lint: $(STAMP)
	$(VENV)/bin/black --check $(LINTED)
	$(VENV)/bin/isort --check-only $(LINTED)
	$(VENV)/bin/flake8 $(LINTED)

clean-env:
	rm -rf $(VENV)
