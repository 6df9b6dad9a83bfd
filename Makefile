# Two commands do all set-up on a fresh machine:
#   make demo   train a pipelined model across 4 local processes
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup browser clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Browser tests use Debian's chromium; install it when we can (root), else they
# are skipped outside CI and fail inside it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed and not root; browser tests will be skipped"; fi; }

demo: setup
	$(VENV)/bin/conveyor demo

test: setup browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
