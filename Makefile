# quantcli developer targets. `make demo` and `make test` are the two set-up commands of the README.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .cache/install.stamp

.PHONY: install install-ref demo test test-fast lint bench fixture llamacpp clean

$(STAMP): pyproject.toml setup.py
	$(PIP) install --quiet -e '.[dev]'
	@mkdir -p .cache && touch $(STAMP)

install: $(STAMP)

# Reference tools for the tests: llama.cpp built from the llama-cpp-python sdist, torch (CPU build on
# disk, pinned) and transformers for llama.cpp's own convert_hf_to_gguf.py.
install-ref: install
	$(PIP) install --quiet 'torch==2.13.0' 'transformers>=4.46,<5' 'protobuf>=4.21'
	bash scripts/build_llamacpp.sh

fixture: install
	$(PYTHON) scripts/make_smollm2_fixture.py

demo: install fixture
	$(PYTHON) -m quantcli convert "$$($(PYTHON) scripts/make_smollm2_fixture.py --print-path)" \
		--type q8_0 -o out/SmolLM2-135M-Q8_0.gguf --force

test: install-ref fixture
	$(PYTHON) -m pytest -q -ra

test-fast: install
	$(PYTHON) -m pytest -q -ra -m "not slow"

lint: install
	ruff check quantcli tests scripts
	ruff format --check quantcli tests scripts

bench: install-ref fixture
	$(PYTHON) scripts/bench.py

clean:
	rm -rf build .cache out *.egg-info
