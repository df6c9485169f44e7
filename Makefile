# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[lite,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/transferkit train samples/hymenoptera_small --out runs/demo

test: $(STAMP) browser
	$(PY) -m pytest -q

# The real browser of the page tests: Debian's chromium, installed when missing (needs root and
# apt-get; elsewhere those tests skip and say why).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the page tests (apt-get)"; \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)); } || \
	  echo "warning: chromium could not be installed; the browser tests will skip"; }

bench: $(STAMP)
	$(PY) bench/speed.py ../shared/assets/datasets/hymenoptera_data --repeat 3

clean:
	rm -rf runs .pytest_cache
