# SSMSpine shards. The two commands: `make shards` and `make test` (each sets up .venv first).
PYTHON ?= python3.11
VENV ?= .venv
# The pinned CPU wheel installs in seconds here; override, e.g. TORCH_SPEC="torch>=2.6", for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# SRC: archives or extracted directories to convert; empty means the synthetic default below.
SRC ?=
OUT ?= data/shards
VERIFY ?= 1
WORKERS ?=
SHARD_SIZE ?= 256MB
# PREFER=speed: codecs chosen for decoding speed rather than size (see docs/FORMAT.md, "Encodings")
PREFER ?= size
# PASSWORD_FILE: passwords of encrypted sources (one line for all, or lines `NAME.zip: PASSWORD`; docs/SAFETY.md)
PASSWORD_FILE ?=
SYNTH ?= data/raw/SSMSpine_Train_synthetic.zip
SYNTH_PATIENTS ?= 2
SYNTH_SHAPES ?= 32

PY := $(VENV)/bin/python
SSMSPINE := $(VENV)/bin/ssmspine
STAMP := $(VENV)/.installed
WORKERS_FLAG := $(if $(WORKERS),--workers $(WORKERS),)
PASSWORD_FLAG := $(if $(PASSWORD_FILE),--password-file '$(PASSWORD_FILE)',)

.PHONY: venv shards test lint bench bench-convert bench-scale figures clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(SYNTH): | $(STAMP)
	$(SSMSPINE) synth $@ --patients $(SYNTH_PATIENTS) --shapes $(SYNTH_SHAPES) --seed 0

shards: $(STAMP) $(if $(SRC),,$(SYNTH))
	$(SSMSPINE) convert $(or $(SRC),$(SYNTH)) --out $(OUT) --shard-size $(SHARD_SIZE) $(if $(PREFER),--prefer $(PREFER),) $(WORKERS_FLAG) $(PASSWORD_FLAG)
ifeq ($(VERIFY),1)
	$(SSMSPINE) verify $(or $(SRC),$(SYNTH)) --out $(OUT) $(WORKERS_FLAG) $(PASSWORD_FLAG)
endif

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff owns the layout (`ruff format`) and checks imports and errors (`ruff check`); CI runs both
lint: $(STAMP)
	$(VENV)/bin/ruff format --check pipeline tests examples benchmarks
	$(VENV)/bin/ruff check pipeline tests examples benchmarks

bench-convert: $(STAMP)
	$(PY) -m benchmarks convert
	$(PY) -m benchmarks.report bench

# convert + both verify modes + reader start-up on 2, 64 and SCALE_SAMPLES samples (sets kept in data/bench-scale);
# e.g. `make bench-scale SCALE_SAMPLES=160 SCALE_REPEATS=1` for a quick check
SCALE_SAMPLES ?=
SCALE_REPEATS ?=
bench-scale: $(STAMP)
	$(PY) -m benchmarks scale $(if $(SCALE_SAMPLES),--samples $(SCALE_SAMPLES),) $(if $(SCALE_REPEATS),--repeats $(SCALE_REPEATS),)
	$(PY) -m benchmarks.report bench

bench: $(STAMP)
	$(PY) -m benchmarks read
	$(PY) -m benchmarks s3
	$(PY) -m benchmarks.report bench

# after `make shards` on the synthetic default: the README's pictures
figures: $(STAMP)
	$(SSMSPINE) show $(OUT) --split train --index 0 -o docs/sample.png
	$(SSMSPINE) show $(OUT) --split train --grid 6 -o docs/grid.png

clean:
	rm -rf data/shards
