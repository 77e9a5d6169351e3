# The two set-up commands of the README. Each creates ./.venv when needed and is safe to re-run.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench-quick lint setup

setup:
	@bash scripts/bootstrap.sh

## make demo: fine-tune the embedded SmolLM2-135M-Instruct with EfficiencyCallback (stops on a token budget)
demo: setup
	$(PY) examples/finetune_demo.py $(ARGS)

## make test: the whole test suite, slow tests (real SmolLM2, two-process runs, benchmarks' quick mode) included
test: setup
	$(PY) -m pytest -ra $(ARGS)

lint: setup
	$(PY) -m ruff check ftcallback tests examples scripts
	$(PY) -m mypy ftcallback
