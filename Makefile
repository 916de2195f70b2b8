# Beha2Vec: the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample/ga4
LAKE ?= lake
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export SPARK_LOCAL_IP := 127.0.0.1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Spark needs Java 17+: use JAVA_HOME when set, else the java on PATH.
JAVA := $(if $(JAVA_HOME),$(JAVA_HOME)/bin/java,$(shell command -v java 2>/dev/null))
ifeq ($(JAVA_HOME),)
ifneq ($(JAVA),)
export JAVA_HOME := $(patsubst %/bin/java,%,$(realpath $(JAVA)))
endif
endif

.PHONY: setup java browser run test lint bench package clean distclean

setup: java $(STAMP)

java:
	@if [ -z "$(JAVA)" ] || ! "$(JAVA)" -version >/dev/null 2>&1; then \
	  echo "error: Java 17 or newer is required (Spark runs on the JVM). Install it, e.g." \
	       "'apt-get install openjdk-17-jre-headless', or set JAVA_HOME." >&2; exit 1; fi
	@v=$$("$(JAVA)" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "error: Java 17 or newer is required, found version '$$v' at $(JAVA); set JAVA_HOME." >&2; exit 1; fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(SAMPLE): | setup
	$(BIN)/beha2vec synth --kind ga4 --users 200 --days 28 --personas 5 --seed 7 --workers 2 --out $(SAMPLE)

# dist/: the wheel (pip install on a cluster's nodes or image) and a zip of the package for
# spark-submit --py-files (docs/cluster.md)
package: setup
	@rm -rf dist build && mkdir -p dist
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .
	@rm -rf build
	cd lib && zip -qr ../dist/beha2vec.zip beha2vec -x '*__pycache__*'
	@ls -l dist

run: setup $(SAMPLE)
	$(BIN)/beha2vec --conf conf/local.yaml --lake $(LAKE) run --source ga4 $(SAMPLE) \
	  --truth $(SAMPLE)/_truth/truth_users.csv

# tests/test_report.py loads the report in headless Chromium; install Debian's where we can
# (root with apt-get), else say the check will be skipped. Never fails, so `make test` runs anywhere.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq chromium; } \
	    || echo "note: could not install chromium; the report's browser test will be skipped"; \
	else \
	  echo "note: /usr/bin/chromium is missing (install Debian's 'chromium', or run 'make browser' as root);" \
	       "the report's browser test will be skipped"; \
	fi

test: setup browser
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check lib jobs tests bench

bench: setup
	$(BIN)/python bench/sessionize.py --events 1000000 --repeats 3
	$(BIN)/python bench/embed.py

clean:
	rm -rf $(LAKE) data/sample spark-warehouse metastore_db .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
