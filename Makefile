# Floodgate: `make run` brings up the stack and a demo drop; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test unit integration migrate clean help

help:
	@echo "make run    - install, migrate and start the whole stack (Ctrl-C stops it)"
	@echo "make demo   - against a running stack: sell a small drop and show the email"
	@echo "make test   - unit and integration tests (installs what it needs)"

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m devtools.stack

demo: $(STAMP)
	$(BIN)/python -m devtools.demo

test: unit integration

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
