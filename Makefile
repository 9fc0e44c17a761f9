# The two commands of the README: `make demo` and `make test`.
# Both create .venv on first use and install everything into it (torch pinned: an unpinned
# torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[torch,analysis,dashboard,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# two pytest workers (pytest-xdist): a module's tests stay on one worker (--dist loadfile), in the
# order tests/conftest.py gives (--no-loadscope-reorder: the shared `demo --small` output, built once
# per run, starts first, long modules next); TEST_WORKERS=0 runs serially
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

demo: install
	$(PY) experiments/demo.py --out demo_out

clean:
	rm -rf $(VENV) demo_out
