# iotgw: `make run` and `make test` work on a fresh Debian machine with Swift installed.
# Both install what is missing (apt packages, Python test clients) before building.

SWIFT ?= swift
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CONFIG ?= Configs/iotgw.yaml

# System packages: zlib (permessage-deflate), the C libraries the simulator and bridge link against, the reference broker and
# clients the tests drive, openssl for test certificates, PostgreSQL (server and psql) for the
# PostgreSQL storage tests, and iproute2 (`ip netns`) for the bridge test that runs an upstream and two
# gateways as three hosts in network namespaces, and Chromium with its WebDriver (and fonts) for the dashboard's
# browser test.
APT_PACKAGES := pkg-config zlib1g-dev libsqlite3-dev libmosquitto-dev libwebsockets-dev mosquitto mosquitto-clients openssl postgresql iproute2 \
	chromium chromium-driver fonts-liberation
# Python test clients (real peers for the end-to-end suite) and a PostgreSQL driver to read the rows back.
PIP_PACKAGES := paho-mqtt==2.* websockets pytest prometheus_client jsonschema pyyaml psycopg2-binary selenium

.PHONY: all deps apt-deps pip-deps build build-release run test unit-test integration-test fuzz fuzz-build fuzz-smoke clean bench microbench

all: build

deps: apt-deps pip-deps

apt-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

pip-deps:
	@$(PYTHON) -c "import paho.mqtt, websockets, pytest, prometheus_client, jsonschema, yaml, psycopg2, selenium" 2>/dev/null || \
		$(PYTHON) -m pip install -q $(PIP_PACKAGES) 2>/dev/null || \
		$(PYTHON) -m pip install -q --break-system-packages $(PIP_PACKAGES)

build: apt-deps
	$(SWIFT) build

build-release: apt-deps
	$(SWIFT) build -c release

# Starts the gateway in the foreground on the embedded default configuration. Ctrl-C (SIGINT) or
# SIGTERM shuts it down gracefully.
run: build-release
	.build/release/iotgw run --config $(CONFIG)

# `make test` runs everything against a throwaway PostgreSQL server (Tests/Support/postgres.sh: initdb in
# a temporary directory, 127.0.0.1 on a free port, socket in that directory) that is always stopped and
# removed afterwards, also when a test fails or the run is interrupted. IOTGW_TEST_POSTGRES_URL tells the
# Swift tests and pytest where it is.
test: deps
	$(SWIFT) build --build-tests
	@pgdir=$$(mktemp -d /tmp/iotgw-test-postgres.XXXXXX) || exit 1; \
	trap 'Tests/Support/postgres.sh stop "$$pgdir"; rm -rf "$$pgdir"' EXIT; \
	trap 'exit 130' INT TERM; \
	Tests/Support/postgres.sh start "$$pgdir" >/dev/null || exit 1; \
	eval "$$(Tests/Support/postgres.sh env "$$pgdir")"; \
	echo "test PostgreSQL: $$IOTGW_TEST_POSTGRES_URL"; \
	$(MAKE) unit-test integration-test
	$(MAKE) fuzz-smoke

# Swift unit and in-process tests. MOSQUITTO_BIN lets the simulator tests start a reference broker.
unit-test:
	MOSQUITTO_BIN=$$(command -v mosquitto || echo /usr/sbin/mosquitto) $(SWIFT) test --skip-build

# End-to-end tests: the built gateway against real clients (mosquitto_pub/sub, paho-mqtt).
integration-test:
	IOTGW_BIN=$(CURDIR)/.build/debug/iotgw $(PYTHON) -m pytest Tests/Integration -q

# Coverage-guided fuzzing (libFuzzer, -sanitize=fuzzer,address) of the MQTT decoder, the WebSocket
# handshake and frames, the JSON API and the config loader: Fuzz/ (a separate package, built into
# Fuzz/.build/). `make fuzz` runs each target for FUZZ_RUNS inputs (about 10 minutes for mqtt, hours for
# config on 2 cores); `make fuzz-smoke`, part of `make test`, runs each for FUZZ_SMOKE_SECONDS on the
# seed corpus and every input that once crashed (Fuzz/Regressions/).
FUZZ_TARGETS := mqtt websocket jsonapi config
FUZZ_RUNS ?= 10000000
FUZZ_SMOKE_SECONDS ?= 15

fuzz-build:
	Fuzz/fuzz.sh build

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do Fuzz/fuzz.sh run $$t -runs=$(FUZZ_RUNS) || exit 1; done

fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do Fuzz/fuzz.sh run $$t -max_total_time=$(FUZZ_SMOKE_SECONDS) || exit 1; done

# Benchmarks: the release build against Debian's mosquitto through `iotgw simulate` (three rounds per scenario,
# medians) plus the micro-benchmarks, written to BENCHMARKS.md. About 20 minutes. Release builds go to
# .build-release/ and the micro-benchmarks build in Benchmarks/.build/, so neither touches the debug build.
BENCH_IOTGW := .build-release/release/iotgw
MICROBENCH_OUTPUT := Benchmarks/.build/microbench.md

bench: apt-deps
	$(SWIFT) build -c release --scratch-path .build-release --product iotgw
	$(MAKE) microbench
	$(PYTHON) Benchmarks/run_bench.py --iotgw $(BENCH_IOTGW) --micro $(MICROBENCH_OUTPUT)

# Codec and topic-matching micro-benchmarks (Benchmarks/Package.swift, ordo-one/benchmark), as markdown.
microbench:
	mkdir -p Benchmarks/.build
	cd Benchmarks && $(SWIFT) package --disable-sandbox benchmark --no-progress --format markdown --path stdout > .build/microbench.md.tmp
	mv Benchmarks/.build/microbench.md.tmp $(MICROBENCH_OUTPUT)
	cat $(MICROBENCH_OUTPUT)

clean:
	rm -rf .build Fuzz/.build
