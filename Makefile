PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-system demo test lint bench clean

setup: setup-system $(STAMP)

# The real-browser test of `maskkit serve`'s page drives Debian's chromium (Playwright cannot download browsers here).
setup-system:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  else echo "warning: /usr/bin/chromium missing (run 'apt-get install chromium' as root for the browser test)"; fi; \
	fi

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[test,pretrained,serve,tune,onnx,openvino,ray,ssl,explain,robustness]'
	touch $(STAMP)

# The main job: synthetic data -> train the bottom-up U-Net (about 5 CPU minutes) -> evaluate -> overlays, metrics,
# curves in runs/demo/; then the data tools on the same data (validate, info, a lossless YOLO round trip).
DEMO := runs/demo
demo: setup
	$(BIN)/maskkit demo --out $(DEMO)
	$(BIN)/maskkit validate $(DEMO)/data/dataset.yaml
	$(BIN)/maskkit info $(DEMO)/data/dataset.yaml --plots $(DEMO)/data_plots
	$(BIN)/maskkit convert $(DEMO)/data/train $(DEMO)/yolo --to yolo
	$(BIN)/maskkit convert $(DEMO)/yolo $(DEMO)/roundtrip --to coco
	@echo "demo outputs in $(DEMO)/"

test: lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/data_io.py
	$(BIN)/python benchmarks/eval_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
