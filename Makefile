# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so pip takes the local CPU build instead of a multi-GB CUDA wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,eval,tracking]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	mkdir -p .tmp
	TMPDIR=$(CURDIR)/.tmp TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/.tmp/inductor HF_HUB_OFFLINE=1 \
	  $(BIN)/python -m pytest --durations=8 tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/vpae demo --out outputs/demo

clean:
	rm -rf $(VENV) .tmp outputs
