# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint typecheck venv clean redis-server chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,redis,cli]'
	touch $(STAMP)

venv: $(STAMP)

# redis-server is needed by the Redis tests; install it if missing (Debian/Ubuntu).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server missing: installing with apt-get"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq redis-server); }

# Debian's chromium drives the admin page's browser tests (Playwright with
# executable_path; never a browser download). If it cannot be installed, those
# tests skip and say why; in CI (CI=true) this target fails instead, as the
# tests would (tests/_ci.py).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "chromium missing: installing with apt-get"; \
	  (apt-get update -qq && apt-get install -y -qq chromium) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq chromium) || \
	  if [ "$$CI" = true ]; then \
	    echo "chromium could not be installed; CI=true: the browser tests must run" >&2; \
	    exit 1; \
	  else \
	    echo "chromium could not be installed: the browser tests will skip"; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

test: $(STAMP) redis-server chromium lint typecheck
	$(BIN)/python -m pytest

bench: $(STAMP) redis-server
	$(BIN)/python -m benchmarks

demo: $(STAMP)
	$(BIN)/foundation demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
