# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[train,lite,mlflow,tensorboard,video,openvino,coreml,tflite,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/transferkit train samples/hymenoptera_small --out runs/demo

# ruff's checks, the suite, then its precision-dependent tests (-m precision) once more in bf16:
# they compare in fp32 by default on every CPU, and bf16 runs anywhere (emulated where the CPU lacks it).
test: $(STAMP) system-deps
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -q
	@echo "precision-dependent tests in bf16:"
	$(PY) -m pytest -q -m precision --precision bf16

# What the tests need from the system: Debian's chromium (the real browser of the page tests) and a
# font with CJK glyphs (class names in Chinese in the plots), installed when missing (needs root
# and apt-get; elsewhere those tests skip and say why).
SYSTEM_DEPS := chromium:chromium fonts-wqy-microhei:/usr/share/fonts/truetype/wqy/wqy-microhei.ttc
system-deps:
	@for dep in $(SYSTEM_DEPS); do pkg=$${dep%%:*}; probe=$${dep#*:}; \
	  if command -v "$$probe" >/dev/null 2>&1 || [ -e "$$probe" ]; then continue; fi; \
	  echo "installing Debian's $$pkg for the tests (apt-get)"; \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$pkg >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$pkg >/dev/null)); } || \
	  echo "warning: $$pkg could not be installed; the tests that need it will skip"; \
	done

bench: $(STAMP)
	$(PY) bench/speed.py ../shared/assets/datasets/hymenoptera_data --repeat 3

clean:
	rm -rf runs .pytest_cache
