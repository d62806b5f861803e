# Two entry points (see README "Quick start"). Both create .venv on first use and install
# torch 2.13.0 (CPU wheel) before the project, so a fresh Linux box with Python 3.11 needs
# nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: demo test lint clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[train,dev,volume]"
	touch $@

## demo: the main job: fuse the shipped samples → export (FP32 + FP16 ONNX, engine where
## TensorRT and a GPU exist) → benchmark every backend present
demo: $(BIN)/.installed
	$(BIN)/cminet fuse --samples --out $(OUT)/fused
	$(BIN)/cminet-export --fp16 --out $(OUT)/export
	$(BIN)/cminet-bench --quick --json $(OUT)/bench.json --workdir $(OUT)/bench-cache

## test: lint, then the whole pytest suite (CPU; GPU tests skip themselves)
test: $(BIN)/.installed lint
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
