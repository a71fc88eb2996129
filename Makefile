# The two set-up commands: `make demo` and `make test`. Both create and use .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo chat test test-slow lint typecheck clean venv browser pdf-tools

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

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs
