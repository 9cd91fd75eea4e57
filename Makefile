# `make run` and `make test` bootstrap .venv themselves; nothing else is needed on a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# On a Raspberry Pi the venv must see apt's python3-picamera2 (and its numpy < 2 / simplejpeg ABI).
IS_PI := $(shell grep -qas "Raspberry Pi" /proc/device-tree/model && echo 1)
VENV_FLAGS := $(if $(IS_PI),--system-site-packages,)
# x86_64: the CPU build of torch lies on local disk; a bare `torch` would pull a multi-GB CUDA build.
# aarch64 (a Pi): PyPI's torch 2.13 aarch64 wheel requires CUDA packages on Linux (cuda-toolkit,
# cudnn, nccl: gigabytes on an SD card), so take the CPU build from PyTorch's own index.
TORCH_PIN := $(if $(filter x86_64,$(ARCH)),torch==2.13.0,$(if $(filter aarch64,$(ARCH)),torch --index-url https://download.pytorch.org/whl/cpu,))
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: run test test-slow soak bench aarch64-check capfilt-experiment blip2-experiment demo-model screenshot clean

$(PY):
	python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PIP) --upgrade pip
	$(if $(TORCH_PIN),$(PIP) $(TORCH_PIN),)
	$(if $(IS_PI),$(PIP) "numpy<2",)

# run: the library, the app and the converter (the defaults convert Salesforce checkpoints to int8
# once); a Pi that runs only `blip convert` folders can install `.[app]` alone, without torch
$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PIP) -e ".[app,convert]" $(if $(IS_PI),"numpy<2",)
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PIP) -e ".[dev]" $(if $(IS_PI),"numpy<2",)
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(VENV)/bin/blip-cam

test: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not slow" -n auto --dist loadfile

test-slow: $(VENV)/.dev-installed
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m slow

# The real app, offscreen, at 30 fps for 10 minutes: alive, answering, memory flat (scripts/soak.py).
soak: $(VENV)/.dev-installed
	QT_QPA_PLATFORM=offscreen $(PY) scripts/soak.py --seconds 600

# The Pi 5 study's transformers, beside ours (pip --target), for the bench's "vs the study" row;
# best effort: without wheels for this Python the bench runs without that row.
STUDY := .study-transformers
bench: $(VENV)/.dev-installed
	@[ -f $(STUDY)/transformers/__init__.py ] || $(PIP) --no-deps --target $(STUDY) transformers==4.41.1 \
		tokenizers==0.19.1 huggingface_hub==0.23.4 requests urllib3 idna certifi charset_normalizer \
		|| echo "could not install transformers 4.41.1; benchmarking without the study's release"
	$(VENV)/bin/blip bench $$([ -f $(STUDY)/transformers/__init__.py ] && echo --study-transformers $(STUDY))

# The int8 runtime on an emulated Pi 5 CPU (qemu-user, Cortex-A76) against this machine: needs
# qemu-user-static and debootstrap; correctness only (emulation is slow).
aarch64-check: $(VENV)/.dev-installed
	$(PY) scripts/aarch64_check.py

capfilt-experiment: $(VENV)/.dev-installed
	$(PY) -m training.experiments.capfilt_effect --parallel

# BLIP-2's zero-shot VQA in miniature (issue #18): docs/blip2.md and docs/blip2_results.json
blip2-experiment: $(VENV)/.dev-installed
	$(PY) -m training.experiments.blip2_zero_shot

demo-model: $(VENV)/.dev-installed
	$(PY) -m training.experiments.demo_model

screenshot: $(VENV)/.dev-installed
	QT_QPA_PLATFORM=offscreen $(PY) scripts/screenshot.py

clean:
	rm -rf $(VENV) $(STUDY) build *.egg-info .pytest_cache
