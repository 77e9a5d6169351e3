"""The benchmarks in scripts/ run: each one's --quick mode, through a subprocess as CI would.

Nothing here asserts a target or a duration (speed belongs in the benchmarks themselves): only that
each script exits 0 and writes JSON with its fields present and its numbers finite, and that
run_benchmarks.py builds BENCHMARKS.md from those results.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

pytestmark = pytest.mark.slow

# Per benchmark: paths into results.models[i] whose values must be finite numbers.
EXPECTED: dict[str, list[str]] = {
    "overhead": ["overhead", "outside_generate_ms", "measure_s", "bare_s", "round_ratios"],
    "training": [
        "share_measured",
        "check_s",
        "step_s",
        "ttft_s",
        "tpot_s",
        "answer_tokens",
        "bookkeeping_s_per_check",
        "share_ref_defaults",
        "without_s",
        "with_s",
    ],
    "precision": ["first_call_ratio_median", "noise_cv_median"],
    "decisions": ["forward_share"],
    "agreement": ["ratio", "deviation", "worst_deviation"],
    "scaling": ["slope_prompts", "slope_max_new_tokens", "batch_speedup"],
    "cli": ["help_s", "bare_s", "help_ratio", "median_s"],
    "drift": ["forward_share", "cost_ratio", "growth_matches", "load_average_start"],
}
# What each --quick run reports under results.models[i].model: a tiny model, or none for the CLI.
QUICK_MODELS = {"cli": ["none"]}


def _finite_numbers(value: Any) -> Iterable[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, list):
        return [v for item in value for v in _finite_numbers(item)]
    raise AssertionError(f"expected a number or a list of numbers, got {value!r}")


def _run(name: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / f"bench_{name}.py"), "--quick", "--json", str(out)],
        cwd=SCRIPTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (
        f"bench_{name}.py --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert any(proc.stdout.strip().splitlines()[-2].startswith(p) for p in ("PASS:", "MISS:", "INFO:"))
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_quick_mode_writes_complete_results(name: str, results_dir: Path) -> None:
    data = _run(name, results_dir / f"{name}.json")

    assert data["benchmark"] == name
    assert data["quick"] is True
    for key in ("title", "target", "method", "command", "verdict"):
        assert isinstance(data[key], str) and data[key], key
    assert data["command"].startswith(f"python scripts/bench_{name}.py --quick")
    assert data["passed"] in (True, False, None)
    assert data["verdict"].split(":")[0] in ("PASS", "MISS", "INFO")
    machine = data["machine"]
    for key in ("cpu", "cpu_cores_usable", "torch_threads", "torch", "transformers", "python", "device"):
        assert machine[key] not in (None, ""), key
    assert machine["device"] == "cpu" and machine["gpu"] is None
    assert data["tables"] and all(t["markdown"].startswith("| ") for t in data["tables"])

    models = data["results"]["models"]
    assert [m["model"] for m in models] == QUICK_MODELS.get(name, ["tiny-gpt2"])
    for model in models:
        for key in EXPECTED[name]:
            numbers = list(_finite_numbers(model[key]))
            assert numbers and all(math.isfinite(v) for v in numbers), (key, model[key])


def test_cli_help_imports_no_heavy_module(results_dir: Path) -> None:
    path = results_dir / "cli.json"
    data = json.loads(path.read_text()) if path.exists() else _run("cli", path)
    assert "torch" not in data["results"]["heavy_imports"]
    assert "transformers" not in data["results"]["heavy_imports"]


def test_decisions_count_every_condition(results_dir: Path) -> None:
    path = results_dir / "decisions.json"
    data = json.loads(path.read_text()) if path.exists() else _run("decisions", path)
    summary = data["results"]["models"][0]["summary"]
    assert [s["slowdown"] for s in summary] == [0.0, 0.1, 0.25, 0.5]
    for s in summary:
        assert 0 <= s["stops"] <= s["runs"] and math.isfinite(s["ratio_median"])
    assert {t["slowdown"] for t in data["results"]["models"][0]["trainer_summary"]} == {0.0, 0.25, 0.5}


def test_drift_counts_every_condition(results_dir: Path) -> None:
    path = results_dir / "drift.json"
    data = json.loads(path.read_text()) if path.exists() else _run("drift", path)
    model = data["results"]["models"][0]
    assert [s["condition"] for s in model["summary"]] == [
        "unchanged, load",
        "+10%",
        "+10%, load",
        "+25%",
        "+25%, load",
        "+50%",
        "+50%, load",
    ]
    for s in model["summary"]:
        assert 0 <= s["stops"] <= s["runs"] and 3 <= s["repeats_mean"] <= 9
    assert all(g["stop_epoch"] is not None for g in model["growth"])


def test_agreement_counts_tokens_by_hand(results_dir: Path) -> None:
    path = results_dir / "agreement.json"
    data = json.loads(path.read_text()) if path.exists() else _run("agreement", path)
    for p in data["results"]["models"][0]["per_prompt"]:
        assert isinstance(p["hand_output_tokens"], int) and p["ftcallback_output_tokens"]


def test_run_benchmarks_renders_markdown_from_results(results_dir: Path, tmp_path: Path) -> None:
    for name in EXPECTED:
        if not (results_dir / f"{name}.json").exists():
            _run(name, results_dir / f"{name}.json")
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "run_benchmarks.py"),
            "--from-json",
            str(results_dir),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert "## Machine" in text and "GPU figures not measured" in text and "Quick mode" in text
    for name in EXPECTED:
        assert f"python scripts/bench_{name}.py --quick" in text
    assert text.count("\n## ") == 2 + len(EXPECTED)  # machine, summary, one section per benchmark
