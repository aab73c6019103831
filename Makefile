# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine themselves.
VENV    ?= .venv
PYTHON  ?= python3
DEMO_ROOT := /tmp/vmfleet-quickstart
# Go builds the test kube-apiserver and tests/flux.
export PATH := $(PATH):/usr/local/go/bin

.PHONY: demo demo-sonas test soak crds bench clean

$(VENV)/.installed: pyproject.toml
	hack/system-packages.sh demo
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	hack/system-packages.sh guest
	DEMO_ROOT=$(DEMO_ROOT) $(VENV)/bin/python hack/demo.py

demo-sonas: $(VENV)/.installed
	hack/demo-sonas.sh

test: $(VENV)/.installed
	hack/system-packages.sh test
	VENV=$(VENV) hack/check.sh
	$(VENV)/bin/pytest -q -ra --durations=40

crds: $(VENV)/.installed
	$(VENV)/bin/vmfleet crds -d crds --reference docs/api.md --troubleshooting docs/operations.md

soak: $(VENV)/.installed  # the safety state machine with fresh seeds, long: prints sequences and steps tried
	hack/system-packages.sh test
	$(VENV)/bin/python -m bench soak $(SOAK_ARGS)

bench: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	$(VENV)/bin/python -m bench --report

clean:
	-[ -x $(VENV)/bin/python ] && DEMO_ROOT=$(DEMO_ROOT) $(VENV)/bin/python hack/demo.py --clean
	rm -rf $(VENV) $(DEMO_ROOT)
