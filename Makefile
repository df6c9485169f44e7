# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[lite,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/transferkit train samples/hymenoptera_small --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/speed.py ../shared/assets/datasets/hymenoptera_data --repeat 3

clean:
	rm -rf runs .pytest_cache
