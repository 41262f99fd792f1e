# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds on the development machines' disk (pip takes them from there, no download).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test,docs,medmnist,timm,xrv,dicom,onnx,mlflow,tensorboard,explain,labels]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xferlab demo --out runs/demo

test: $(STAMP)
# lint and import order (pyproject.toml [tool.ruff]); fails on a violation
	$(BIN)/ruff check src tests benchmarks docs/hooks
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome \
		>/dev/null 2>&1 || echo "make test: chromium is not installed, so the browser test (marker browser) will \
	not run; install it with: apt-get install chromium"
# the docs site (mkdocs.yml) into the git-ignored site/: a broken link, a page left out of the nav or an API object
# mkdocstrings cannot find fails the build (about 15 s on the 2-core dev machine)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs site .pytest_cache
