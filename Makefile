# The two set-up commands of the README. Each creates ./.venv when needed and is safe to re-run.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench bench-quick lint setup

setup:
	@bash scripts/bootstrap.sh

## make demo: fine-tune the embedded SmolLM2-135M-Instruct with EfficiencyCallback (stops on a token budget)
demo: setup
	$(PY) examples/finetune_demo.py $(ARGS)

## make test: the whole test suite, slow tests (real SmolLM2, two-process runs, benchmarks' quick mode) included
test: setup
	$(PY) -m pytest -ra --durations=15 $(ARGS)

## make bench: the full benchmark suite on a quiet machine; writes BENCHMARKS.md (about 10 minutes on 2 cores)
bench: setup
	$(PY) scripts/run_benchmarks.py $(ARGS)

## make bench-quick: every benchmark in its quick mode (the test suite runs these too)
bench-quick: setup
	$(PY) scripts/run_benchmarks.py --quick $(ARGS)

lint: setup
	$(PY) -m ruff check ftcallback tests examples scripts
	$(PY) -m mypy ftcallback
