# Two commands for a new user: `make demo` (reconstruct the example photo) and `make test`.
# Each sets itself up: a virtual environment with torch==2.13.0 (CPU) installed first, then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,gl]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/morphable demo -o out/demo

test: $(STAMP)
	$(BIN)/python -m pytest

# the parser fuzzers with many more cases than CI runs (FUZZ_EXAMPLES per property; tests/fuzz/harness.py)
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	MORPHABLE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -m fuzz tests/fuzz

clean:
	rm -rf $(VENV) out
