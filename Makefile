# Floodgate: `make run` brings up the stack and a demo drop; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test unit integration clean help

help:
	@echo "make run             - install, migrate and start the whole stack (Ctrl-C stops it)"
	@echo "make demo            - against a running stack: sell a small drop and show the email"
	@echo "make test            - unit, integration and Kubernetes manifest tests (installs what it needs)"
	@echo "make unit            - the unit tests alone (no network)"
	@echo "make integration     - the integration tests alone (real processes and servers)"
	@echo "make k8s-validate    - render every overlay, validate strictly, policies, alert rules (promtool) and their tests"
	@echo "make k8s-drop OPENS_AT=... [COMPONENTS=keda]  - the drop overlay for an opening time, on stdout"
	@echo "make images          - build the four service images and smoke-test them (installs podman if no Docker)"
	@echo "make images-smoke    - smoke-test the images already built"
	@echo "make bench           - cost per order: orders/s, latency, CPU per order split per process"
	@echo "make bench-inventory - holds per second next to pgbench on the same statements"
	@echo "make bench-line      - the waiting room: joins/s and polls/s, latency, CPU per join and per poll"
	@echo "make rehearsal       - a whole drop with 1,000 buyers and faults, the books checked"
	@echo "make clean           - remove the virtualenv and everything under var/"

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m devtools.stack

demo: $(STAMP)
	$(BIN)/python -m devtools.demo

test: unit integration k8s-validate

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP) pgbouncer chromium
	$(BIN)/python -m pytest tests/integration -q

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# $(call apt_install,PACKAGES): install Debian packages, updating the package lists only when that fails
apt_install = $(SUDO) apt-get install -y $(1) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y $(1); }

# tests/integration/test_pgbouncer.py runs a stack through a local PgBouncer (Debian's package;
# /usr/sbin is not on every user's PATH), installed here when missing
.PHONY: pgbouncer
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || $(call apt_install,pgbouncer)

# tests/k8s/test_monitoring.py checks and unit-tests the alert rules with promtool (Debian's
# prometheus package: no package ships promtool alone), installed here when missing, without the
# node exporter it recommends. On a host run by systemd the package also enables a Prometheus
# server; `systemctl disable --now prometheus` if you do not want one
.PHONY: promtool
promtool:
	@test -x /usr/bin/promtool || $(call apt_install,--no-install-recommends prometheus)

# tests/integration/test_drop_page.py drives Debian's chromium headless through Playwright (the
# system browser's executable: nothing downloads a browser, never `playwright install`), installed
# here when missing
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || $(call apt_install,chromium)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis

# --- Kubernetes (deploy/k8s; see deploy/k8s/README.md) -----------------------------------------
K8S_STAMP := $(VENV)/.installed-k8s
OPENS_AT  ?=
# the optional components the cluster runs, every one its applies name: COMPONENTS="keda tracing"
COMPONENTS ?=

.PHONY: k8s-validate k8s-drop

# quiet, and on stderr: `make k8s-drop > drop-manifests.yaml` may install these first
$(K8S_STAMP): requirements-k8s.txt
	@echo "installing the Kubernetes tools (requirements-k8s.txt) into $(VENV)" >&2
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-k8s.txt >&2
	@touch $(K8S_STAMP)

# render every overlay, validate strictly against two Kubernetes versions, policies, hadolint, tests
k8s-validate: $(STAMP) $(K8S_STAMP) promtool
	$(BIN)/python -m deploy.validate --out var/k8s
	$(BIN)/python -m pytest tests/k8s -q

# the drop overlay for an opening time, with the floors of this moment (deploy/k8s/README.md):
#   make k8s-drop OPENS_AT=2026-12-05T18:00:00+01:00 > drop-manifests.yaml
k8s-drop: $(K8S_STAMP)
	@$(BIN)/python -m deploy.render_drop $(if $(OPENS_AT),--opens-at "$(OPENS_AT)") $(foreach c,$(COMPONENTS),--component $(c))

# holds per second with 1 and 16 stock rows, next to pgbench on the same SQL (not a test)
bench-inventory: $(STAMP)
	$(BIN)/python -m benchmarks.inventory_holds

# --- Drop rehearsal (benchmarks/rehearsal; see its README.md) ---------------------------------
BENCH_STAMP    := $(VENV)/.installed-bench
REHEARSAL_ARGS ?=

.PHONY: rehearsal

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $(BENCH_STAMP)

# an isolated stack, a drop of 300 units to 1,000 buyers with faults, pgbench and the naive
# checkout; report in var/rehearsal/<timestamp>/. Sizes and faults: make rehearsal REHEARSAL_ARGS="--units 500 --buyers 2000"
rehearsal: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.rehearsal $(REHEARSAL_ARGS)

# --- Cost per order (benchmarks/cost.py) --------------------------------------------------------
BENCH_ARGS ?=

.PHONY: bench

# an isolated stack under a light load generator at 16 and 64 connections: orders/s, latency,
# machine CPU per placed order split per process, pgbench and the naive checkout, same run
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.cost $(BENCH_ARGS)

# --- The waiting room under load (benchmarks/line.py) ------------------------------------------
BENCH_LINE_ARGS ?=

.PHONY: bench-line

# an isolated stack and a line in pre-queue: joins/s by fresh buyers, then polls/s, then polls after
# the opening, with latency and machine CPU per join and per poll; report in var/bench-line/<timestamp>/.
# Longer phases: make bench-line BENCH_LINE_ARGS="--seconds 30 --connections 128"
# A big line's opening (joins meanwhile, first admission, last position): BENCH_LINE_ARGS="--seconds 2 --crowd 500000"
bench-line: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.line $(BENCH_LINE_ARGS)

# --- Images (deploy/images.py; see deploy/k8s/README.md, "Images") ------------------------------
IMAGES_ARGS ?=

.PHONY: images images-smoke

# build all four images (Docker if an engine answers, else podman, installed here) and smoke-test
# each: read-only as UID 10001, /healthz answers, a worker's heartbeat check passes, size printed
images: $(STAMP)
	$(BIN)/python -m deploy.images build smoke $(IMAGES_ARGS)

images-smoke: $(STAMP)
	$(BIN)/python -m deploy.images smoke $(IMAGES_ARGS)
