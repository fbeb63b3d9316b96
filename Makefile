# mrimsm: `make demo` and `make test` work from a clean clone with nothing preinstalled.
#
# GPU users: create .venv yourself and install your CUDA build of torch into it
# first; the install step below keeps whatever torch is already importable.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.mrimsm-installed
SAMPLE := data/sample/sample_brain.h5
DEMO_OUT ?= demo_out

.PHONY: install demo test test-all clean-demo benchmarks-readme

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU wheel, unless a torch is importable already), then pin
# it so nothing below can replace it; fastmri and nilearn go in --no-deps
# because their declared dependencies would pull a CUDA torch, torchvision
# and lightning (fastmri) or scikit-learn (nilearn); we only need fastmri's
# data/evaluate modules and the MNI template file nilearn ships.
$(STAMP): pyproject.toml Makefile | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(PIP) install -c $(VENV)/constraints.txt -e ".[test,data]"
	$(PIP) install -c $(VENV)/constraints.txt --no-deps fastmri==0.3.0 nilearn==0.14.1
	@touch $(STAMP)

install: $(STAMP)

$(SAMPLE): | $(STAMP)
	$(PY) data_scripts/make_sample.py --out $(SAMPLE)

demo: $(STAMP) $(SAMPLE)
	$(VENV)/bin/mrimsm recon --accel 6 $(SAMPLE) -o $(DEMO_OUT) --threads 2 \
		--method zero-filled --method sense --method cs --method ssdu --method msm --png $(DEMO_OUT)/png

test: $(STAMP)
	$(PY) -m pytest

# everything, the slow tests too
test-all: $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

# benchmarks/README.md from the committed result files in benchmarks/results/ (no install needed)
benchmarks-readme:
	$(PYTHON) -m benchmarks.readme

clean-demo:
	rm -rf $(DEMO_OUT)
