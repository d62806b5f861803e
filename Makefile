# Two entry points (see README "Quick start"). Both create .venv on first use and install
# torch 2.13.0 (CPU wheel) before the project, so a fresh Linux box with Python 3.11 needs
# nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `cminet serve` gets its own environment: PyTriton 0.7 requires numpy < 2 (see README "Serving").
SERVE_VENV ?= .venv-serve
SERVE_BIN := $(SERVE_VENV)/bin
OUT ?= out

TYPESTUBS := $(VENV)/typestubs

.PHONY: demo test test-stacks test-aarch64 lint gpu-check clean shipped-onnx

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[train,dev,triton,volume,openvino]"
	touch $@

# The serving environment the serve tests start `cminet serve` from: no torch, numpy < 2.
$(SERVE_BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_BIN)/python -m pip install --quiet --upgrade pip
	$(SERVE_BIN)/python -m pip install --quiet -e ".[serve]"
	touch $@

## demo: the main job: fuse the shipped samples → export (FP32 + FP16 ONNX, engine where
## TensorRT and a GPU exist) → benchmark every backend present
demo: $(BIN)/.installed
	$(BIN)/cminet fuse --samples --out $(OUT)/fused
	$(BIN)/cminet-export --fp16 --out $(OUT)/export
	$(BIN)/cminet-bench --quick --json $(OUT)/bench.json --workdir $(OUT)/bench-cache

## shipped-onnx: re-export cminet/weights/cminet.onnx, cminet_fp16.onnx and reference_outputs.npz
## from the shipped weights (run after changing them; a test checks they still match)
shipped-onnx: $(BIN)/.installed
	$(BIN)/cminet-export --fp16 --engine no --out $(OUT)/shipped
	cp $(OUT)/shipped/cminet.onnx $(OUT)/shipped/cminet_fp16.onnx $(OUT)/shipped/reference_outputs.npz cminet/weights/

## test: lint, then the whole pytest suite (CPU; GPU tests skip themselves)
test: $(BIN)/.installed $(SERVE_BIN)/.installed lint
	CMINET_SERVE_PYTHON=$(SERVE_BIN)/python $(BIN)/python -m pytest -q

## test-stacks: the torch-free tests in fresh venvs of each device stack (tests/stacks/: JetPack 6
## at the declared minimums, the newest Python and wheels, and cminet[serve,volume]); pyenv's Pythons
test-stacks:
	$(PYTHON) tests/stacks/run.py $(STACKS)

## test-aarch64: the torch-free smoke on aarch64 (a Jetson's CPU) under qemu-user, compared with
## this machine's result (installs qemu-user-static; tests/stacks/aarch64.sh)
test-aarch64: $(BIN)/.installed
	HOSTPY=$(CURDIR)/$(BIN)/python bash tests/stacks/aarch64.sh

lint: $(BIN)/.installed $(TYPESTUBS)/.installed
	$(BIN)/ruff check .
	MYPYPATH=$(TYPESTUBS) $(BIN)/mypy

# NVIDIA's TensorRT type stubs for mypy. --no-deps: they depend on the real tensorrt wheel.
# --target keeps them out of site-packages, where a bare tensorrt/ folder would make
# `import tensorrt` succeed. The published 10.13.0.35.1 .pyi does not parse as is (plugin
# methods with a parameter named `in`, add_scale_nd's channel_axis without a default after
# defaulted ones); the sed fixes only those lines, nothing cminet calls.
$(TYPESTUBS)/.installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(TYPESTUBS) tensorrt-stubs==10.13.0.35.1
	sed -i -E 's/([(, ])in: /\1in_: /g; s/(power: Weights = None, channel_axis: int)\)/\1 = ...)/' \
		$(TYPESTUBS)/tensorrt_bindings/tensorrt.pyi
	touch $@

## gpu-check: on a machine with an NVIDIA GPU, the checks a CPU cannot make (see
## benchmarks/gpu_check.py); writes benchmarks/results/<gpu>-<date>.json. Runs the checkout
## as it is with the machine's own Python (no venv, no install, no network: cminet/__init__.py
## maps export/, runtime/, benchmarks/ for an uninstalled checkout); exits 0 saying so where
## there is no GPU. Override: make gpu-check PYTHON=.venv/bin/python GPU_CHECK_ARGS=--quick
gpu-check:
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PYTHON) -m cminet.benchmarks.gpu_check \
		--out benchmarks/results $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(OUT) .stacks build *.egg-info
