# Entry points: `make demo`, `make finetune-demo` and `make test`. All create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo finetune-demo lint test test-all clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e '.[reference,test]'
	$(PY) -m pip install -q --no-deps alexa-teacher-models==1.0.1
	# libtpu, the TPU compiler, for the ahead-of-time TPU tests; where it has no wheel those skip.
	$(PY) -m pip install -q -e '.[tpu-aot]' || echo "libtpu not installed: tests/test_tpu_aot.py will skip"
	touch $(STAMP)

# Demo tokenizer + tiny-model pretraining on data/sample + generation (alexatm_jax/cli/demo.py).
demo: $(STAMP)
	$(VENV)/bin/alexatm-demo

# Fine-tune a tiny model on a word-order reversal task built from data/sample; held-out BLEU
# before and after, and its plot against the steps (alexatm_jax/cli/finetune_demo.py).
finetune-demo: $(STAMP)
	$(PY) -m alexatm_jax.cli.finetune_demo

# ruff (pinned in the `test` extra) checks style and formatting before the tests run.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two pytest workers (pytest-xdist), each taking whole test files, so that a file's module
# fixtures are built once: XLA:CPU compiles and runs one op at a time on one core, and most of
# the suite's time is compiles and CLI start-ups. TEST_WORKERS=1 runs it in one process.
TEST_WORKERS ?= 2
PYTEST_WORKERS := $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: lint
	$(PY) -m pytest -q -m "not slow" --durations=25 $(PYTEST_WORKERS) tests

test-all: lint
	$(PY) -m pytest -q $(PYTEST_WORKERS) tests

clean:
	rm -rf $(VENV) .pytest_cache
