# quantcli developer targets. `make demo` and `make test` are the two set-up commands of the README.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .cache/install.stamp
QUANTCLI_CACHE ?= $(HOME)/.cache/quantcli

.PHONY: install install-ref install-clients install-llmc demo test test-plain test-fast lint bench bench-calibration fixture llamacpp clean

$(STAMP): pyproject.toml setup.py quantcli_build.py quantcli/native/quants.c quantcli/native/quants_simd.h
	$(PIP) install --quiet -e '.[dev]'
	@mkdir -p .cache && touch $(STAMP)

install: $(STAMP)

# Reference tools for the tests: llama.cpp built from the llama-cpp-python sdist, torch (CPU build on
# disk, pinned) and transformers for llama.cpp's own convert_hf_to_gguf.py.
CONSTRAINTS := .cache/constraints.txt
$(CONSTRAINTS):
	@mkdir -p .cache && echo 'torch==2.13.0' > $(CONSTRAINTS)

install-ref: install $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) 'torch==2.13.0' 'transformers==5.23.0' 'protobuf>=4.21'
	bash scripts/build_llamacpp.sh

# The packed formats' real clients (tests/test_packed_clients.py), bitsandbytes (it writes the checkpoints
# of tests/test_prequantized.py; quantcli never imports it) and Ray for the batch tests.
# torch stays pinned to the CPU build: an unpinned resolver would pull CUDA wheels.
install-clients: install-ref
	$(PIP) install --quiet -c $(CONSTRAINTS) 'compressed-tensors==0.20.0' 'mlx[cpu]==0.32.4' 'mlx-lm==0.32.2' \
		'optimum==2.3.0' 'gptqmodel==7.6.0' 'ray==2.60.0' 'matplotlib==3.11.2' 'bitsandbytes==0.50.2'
	$(PIP) install --quiet --no-deps --upgrade --target "$(QUANTCLI_CACHE)/compressed-tensors-0.12.2" \
		'compressed-tensors==0.12.2'
	$(MAKE) install-llmc

# compressed-tensors 0.12, the last release that writes and reads `actorder: "group"` (weight_g_idx), is
# installed apart from 0.20 above (tests/test_prequantized.py puts it first on PYTHONPATH for one subprocess).
# llm-compressor, the GPTQ reference of tests/test_gptq.py, lives in its own venv: it pins transformers and
# compressed-tensors versions other than ours. It sees our torch (system site packages, same pin).
LLMC_VENV := $(QUANTCLI_CACHE)/venv-llmc
install-llmc: $(CONSTRAINTS)
	$(PYTHON) -m venv --system-site-packages $(LLMC_VENV)
	$(LLMC_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) 'llmcompressor==0.14.0.1' \
		'compressed-tensors==0.19.0' 'transformers==5.17.0' 'auto-round==0.15.1'

fixture: install
	$(PYTHON) scripts/make_smollm2_fixture.py

demo: install fixture
	@mkdir -p out
	$(PYTHON) -m quantcli convert "$$($(PYTHON) scripts/make_smollm2_fixture.py --print-path)" \
		--bits 4 --verify -o out/SmolLM2-135M-Q4_K_M.gguf --force

test: install-clients fixture
	$(PYTHON) -m pytest -q -ra
	$(PYTHON) scripts/check_plain_install.py

# quantcli from `pip install .` alone in a fresh venv (no torch, transformers, protobuf): convert --verify,
# eval, generate, imatrix on SmolLM2 and a SentencePiece Gemma 3. torch here only builds that Gemma.
test-plain: install-ref fixture
	$(PYTHON) scripts/check_plain_install.py

test-fast: install
	$(PYTHON) -m pytest -q -ra -m "not slow"

lint: install
	ruff check quantcli tests scripts

bench: install-ref fixture
	$(PYTHON) scripts/bench.py

# Not part of `make bench`: tens of minutes on 2 cores (docs/benchmarks.md, "Calibration").
bench-calibration: install-ref install-llmc fixture
	$(PYTHON) scripts/make_smollm2_fixture.py --off-grid
	$(PYTHON) scripts/measure_calibration.py

clean:
	rm -rf build .cache out *.egg-info
