VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean conformance chaos

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tidelog server

test: $(STAMP)
	scripts/install-test-tools.sh
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/mypy
	python3 ../shared/tools/check_layers.py src/tidelog 2>/dev/null || test ! -f ../shared/tools/check_layers.py
	$(PY) -m pytest -q -p no:cacheprovider

# the failure tests at full length (make test runs short versions of them)
chaos: $(STAMP)
	scripts/install-test-tools.sh
	TIDELOG_CHAOS_KILLS=20 TIDELOG_CHAOS_MOVE_MB=1024 $(PY) -m pytest -q -s -p no:cacheprovider tests/chaos

# librdkafka's own test suite against a broker (docs/compat.md); builds its runner once
conformance: $(STAMP)
	$(PY) scripts/conformance/run.py --jobs 2

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/produce_fetch.py
	$(PY) bench/memory.py
	$(PY) bench/wal.py
	$(PY) bench/metrics_overhead.py

clean:
	rm -rf $(VENV) data
