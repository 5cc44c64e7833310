# Two commands do all the set-up on a fresh machine (CPU, no Hugging Face Hub needed):
#   make demo   install, build the tiny offline Qwen2.5-VL, run `axolotl train` on the embedded demo
#   make test   install with the dev extra, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
TINY_MODEL := .cache/tiny-qwen2.5-vl
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export AXOLOTL_DO_NOT_TRACK ?= 1
export DO_NOT_TRACK ?= 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || "$$(scripts/find-python.sh)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

$(TINY_MODEL)/config.json: $(VENV)/.installed axolotl_qwenvl_plugin/tiny.py
	$(PY) -m axolotl_qwenvl_plugin.tiny $(TINY_MODEL)

demo: $(TINY_MODEL)/config.json
	rm -rf outputs/qwenvl-tiny
	axolotl train example_configs/qwenvl-tiny.yml
	$(PY) scripts/loss_summary.py outputs/qwenvl-tiny

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf outputs last_run_prepared .cache
