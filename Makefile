# The two set-up commands: `make demo` and `make test`. Both create and use .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo chat test test-slow lint typecheck clean venv browser pdf-tools llama-cpp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and alone, pinned: the CPU build (see pyproject.toml).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[fast,test,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/scratchlm train --config configs/demo.toml --overwrite
	$(BIN)/scratchlm book runs/demo --overwrite

# configs/chat.toml: pretrain a small model with ChatML's turn markers, then SFT it into a
# chatbot (about 20 minutes on 2 cores); talk to it with `scratchlm chat runs/chat`.
chat: $(STAMP)
	$(BIN)/scratchlm train --config configs/chat.toml --overwrite
	$(BIN)/scratchlm finetune sft --config configs/chat.toml --overwrite

# Debian's chromium, which tests/test_report_browser.py drives (Playwright downloads no browser):
# installed with apt as root, else one line says what to install (the test skips, or fails in CI).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "make browser: install Debian's chromium (apt-get install chromium) for the report's browser test"; fi; }

# Debian's poppler-utils (pdftoppm, pdfinfo), with which tests/test_book.py renders the book's
# pages: installed with apt as root, else one line says what to install.
pdf-tools:
	@command -v pdftoppm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils; \
	  else echo "make pdf-tools: install Debian's poppler-utils (apt-get install poppler-utils) for the book's page test"; fi; }

test: $(STAMP) browser pdf-tools
	$(BIN)/python -m pytest

# llama-cpp-python (pyproject's llama-cpp extra), which tests/test_llama_cpp.py loads our GGUF
# exports in. PyPI has only its source, whose build takes ~10 minutes on 2 cores: the wheel is
# built once into the scratchlm cache and installed from there. GGML_NATIVE=OFF (AVX2, no
# AVX-512): the cached wheel must still run when the next machine has another CPU.
WHEELS := $(or $(SCRATCHLM_CACHE),$(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/scratchlm),$(HOME)/.cache/scratchlm)/wheels
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF

LLAMA_CPP_VERSION := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | cut -d= -f3)

llama-cpp: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || { \
	    echo "make llama-cpp: building llama-cpp-python $(LLAMA_CPP_VERSION) from source (~10 min)"; \
	    CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/python -m pip wheel --quiet --no-deps --no-binary llama-cpp-python \
	      --wheel-dir $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION); } && \
	  $(BIN)/python -m pip install --quiet --find-links $(WHEELS) -e '.[llama-cpp]'; }

test-slow: $(STAMP) llama-cpp
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs
