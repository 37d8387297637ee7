# Two entry points, each does all of its own set-up on a fresh machine:
#   make demo   creates .venv and runs the main job (attncc demo)
#   make test   creates .venv and runs the test suite
# and a long check:
#   make fuzz   runs the random-spec tests against the oracle (pytest -m fuzz: small and
#               multi-tile shapes) with ATTNCC_FUZZ_EXAMPLES random examples each (CI runs a
#               bounded, derandomized number), on the FUZZ_BACKENDS (reference tvm triton), from
#               SEED: printed at the start and on failure, random unless given; `make fuzz
#               SEED=1234` replays a run, and a failure prints its falsifying example
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/attncc demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

ATTNCC_FUZZ_EXAMPLES ?= 5000
FUZZ_BACKENDS ?= reference tvm triton
SEED ?=
FUZZ_FILES_reference := tests/test_properties.py
FUZZ_FILES_tvm := tests/test_tvm.py
FUZZ_FILES_triton := tests/test_triton.py
FUZZ_FILES = $(foreach b,$(FUZZ_BACKENDS),$(or $(FUZZ_FILES_$(b)),\
	$(error FUZZ_BACKENDS: unknown backend $(b); use reference, tvm or triton)))

fuzz: $(STAMP)
	@seed=$(SEED); seed=$${seed:-$$($(VENV)/bin/python -c 'import random; print(random.randrange(2 ** 32))')}; \
	replay="make fuzz SEED=$$seed ATTNCC_FUZZ_EXAMPLES=$(ATTNCC_FUZZ_EXAMPLES) FUZZ_BACKENDS='$(FUZZ_BACKENDS)'"; \
	echo "fuzz: seed $$seed, $(ATTNCC_FUZZ_EXAMPLES) examples per test, backends $(FUZZ_BACKENDS); replay: $$replay"; \
	ATTNCC_FUZZ_EXAMPLES=$(ATTNCC_FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest -q -m fuzz --hypothesis-seed=$$seed \
		--hypothesis-show-statistics $(FUZZ_FILES) \
	&& echo "fuzz: passed (seed $$seed)" || { echo "fuzz: FAILED (seed $$seed); replay: $$replay"; exit 1; }

clean:
	rm -rf $(VENV) build *.egg-info
