"""Shared plumbing for the ``scripts/bench_*.py`` benchmarks, one module per kind of fact.

- :mod:`_bench.catalog`: the benchmark models' names and their probe prompts (no torch: run_benchmarks.py
  reads it too);
- :mod:`_bench.cli`: the flags every benchmark shares (``--quick``, ``--models``, ``--device``,
  ``--threads``, ``--json``, ``--seed``) and the setup they imply;
- :mod:`_bench.models`: loading a model and building the exact inputs a bare ``generate`` loop needs
  (encoded independently of ftcallback, left-padded by hand);
- :mod:`_bench.timing`: device-synchronised timing, peak memory, interleaved conditions;
- :mod:`_bench.stats`: medians, CVs, spreads and ratios over finite samples;
- :mod:`_bench.machine`: a description of the machine the numbers come from;
- :mod:`_bench.table`: table cells and markdown tables;
- :mod:`_bench.report`: the :class:`~_bench.report.Report` every benchmark prints and writes as JSON.

Every benchmark prints its tables and one line ``PASS: ...`` / ``MISS: ...`` (``INFO: ...`` when the
issue sets no target) and, with ``--json OUT``, writes the raw numbers plus everything
``scripts/run_benchmarks.py`` needs to build ``BENCHMARKS.md``.

Importing the package sets the environment below, so a benchmark imports it before transformers.
"""

from __future__ import annotations

import os

# Before transformers is imported anywhere: a hub lookup without network hangs ~48 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar
