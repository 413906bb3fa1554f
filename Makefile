# Two commands: `make demo` (the whole paper on synthetic NSD) and `make test` (the test suite);
# `make test-fast` for the edit-run loop. Each builds .venv from the pinned requirements first;
# nothing outside this file is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: install demo demo-weights report test test-fast smoke lint mutants clean install-profile

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	@echo "Done: tables in results/tables/, figures in results/figures/ (fig3.pdf)."

# The demo's released weights (README, "Demo weights"): the demo CLIP and a long language-free
# pre-training of the demo generator, trained by the workflow in their own working directory
# (config/demo-weights.yaml on top of the demo config), exported with their manifest and
# installed as the versioned folder DEMO_WEIGHTS, which config/config.yaml's demo_weights names.
# About 90 min on 2 cores. An existing folder is kept unless FORCE=1.
DEMO_WEIGHTS ?= mindreader/released/demo-v1
DEMO_WEIGHTS_RUN ?= results/demo-weights
demo-weights: $(STAMP)
	$(BIN)/snakemake results/demo_weights/release --snakefile $(CURDIR)/Snakefile \
	  --directory $(DEMO_WEIGHTS_RUN) --cores $(CORES) \
	  --configfile $(CURDIR)/config/config.yaml $(CURDIR)/config/demo-weights.yaml
	$(BIN)/python -m mindreader.demo_weights install $(DEMO_WEIGHTS_RUN)/results/demo_weights/release \
	  $(DEMO_WEIGHTS) $(if $(FORCE),--force)

# The self-contained HTML report of the last run (every table and figure, captioned).
report: $(STAMP)
	$(BIN)/snakemake --cores 1 --report report.html
	@echo "Report: report.html"

# The whole suite on two pytest-xdist workers, each test module on one worker (its module-scoped
# fixtures made once): the SLURM cluster's chain (tests/test_slurm.py, mostly waiting on its time
# limits) and the shared tiny run's tests (tests/test_workflow_run.py) come first in the
# collection (tests/conftest.py) and start side by side; the other modules fill in around them.
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PYTEST) --durations=15 tests

# Unit tests and the library, no Snakemake run (the tests marked workflow are left out).
test-fast: $(STAMP)
	$(PYTEST) --durations=5 -m "not workflow" tests

# config/nsd.yaml at its real shapes, every rule through fig3, the tables and the report, on a
# small synthetic NSD at NSD's sizes with random weights files of the real networks; training cut
# to a step or two by the overlay config that `mindreader.smoke write` makes (README: "Smoke run
# at paper shapes"). Fails unless every metric was measured.
SMOKE_DIR ?= results/smoke
SMOKE_SNAKEMAKE = $(BIN)/snakemake --snakefile $(CURDIR)/Snakefile --directory $(SMOKE_DIR) \
	--configfile $(CURDIR)/config/config.yaml $(CURDIR)/config/nsd.yaml $(abspath $(SMOKE_DIR))/config.yaml
smoke: $(STAMP)
	$(BIN)/python -m mindreader.smoke write $(SMOKE_DIR)
	$(SMOKE_SNAKEMAKE) --cores $(CORES)
	$(SMOKE_SNAKEMAKE) --cores 1 --report $(abspath $(SMOKE_DIR))/report.html
	$(BIN)/python -m mindreader.smoke check $(SMOKE_DIR)

# Workflow hygiene: Snakemake's linter (exit 1 on any lint) and the Snakefile formatter.
lint: $(STAMP)
	$(BIN)/snakemake --lint --workflow-profile none
	$(BIN)/snakefmt --check .

# Mutation audit of the modules behind the paper's tables (not in `test`; hours in full:
# MUTANTS_ARGS="--limit 30" samples 30 mutants a module in about 20 min).
mutants: $(STAMP)
	$(BIN)/python tests/mutation_audit.py $(MUTANTS_ARGS)

# `snakemake --profile slurm` looks profiles up by name in Snakemake's user config folder. Where
# a site has its own `slurm` profile, use it: the rules bring their own resources, and it needs
# only the partitions file (profiles/slurm/partitions.yaml). Where there is none, this copies ours
# there with the cluster's names, e.g.
# `make install-profile SLURM_ACCOUNT=mylab SLURM_PARTITION=cpu SLURM_GPU_PARTITION=gpu`.
# It never overwrites a profile: with one there, it stops and says what to add to it.
SLURM_PARTITION ?= cpu
SLURM_GPU_PARTITION ?= gpu
PROFILE_DEST ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake/slurm
install-profile:
	@if [ -e $(PROFILE_DEST)/config.yaml ] || [ -e $(PROFILE_DEST)/partitions.yaml ]; then \
	  echo "$(PROFILE_DEST) already holds a profile: left as it is. To run this workflow with it, copy" >&2; \
	  echo "profiles/slurm/partitions.yaml next to its config.yaml with your partitions' names, and add" >&2; \
	  echo "'slurm-partition-config: partitions.yaml' to it (the rules bring their own resources); or" >&2; \
	  echo "install ours under another name: make install-profile PROFILE_DEST=~/.config/snakemake/mindreader-slurm" >&2; \
	  exit 1; \
	fi
	mkdir -p $(PROFILE_DEST)
	sed -e 's|^  slurm_account: ""|  slurm_account: "$(SLURM_ACCOUNT)"|' \
	    profiles/slurm/config.yaml > $(PROFILE_DEST)/config.yaml
	sed -e 's|^  cpu:$$|  $(SLURM_PARTITION):|' -e 's|^  gpu:$$|  $(SLURM_GPU_PARTITION):|' \
	    profiles/slurm/partitions.yaml > $(PROFILE_DEST)/partitions.yaml
	@echo "Installed $(PROFILE_DEST): run \`snakemake --profile $(notdir $(PROFILE_DEST)) --configfile config/nsd.yaml\`."

clean:
	rm -rf results .snakemake
