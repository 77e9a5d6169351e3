"""The ``ftcallback`` command line, driven through ``main([...])`` with tiny offline models."""

from __future__ import annotations

import dataclasses
import json
import re
import runpy
import sys
from pathlib import Path

import pytest

from ftcallback._callback import EfficiencyCallback
from ftcallback._errors import BaselineError
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._prompts import prompts_sha256
from ftcallback._report import CheckRecord, RunReport
from ftcallback.cli import main
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

PROBE = ["the model returns a short reply.", "a user measures the latency", "the server generates"]
# Few tokens, two repeats, no warm-up: enough to exercise every path in well under a second per model.
FAST = ["--max-new-tokens", "4", "--repeats", "2", "--warmup", "0"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny GPT-2 models (different random weights), each saved with its tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()
    out = []
    for name, seed in (("base", 0), ("tuned", 1)):
        tiny_causal_lm("gpt2", seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(root / name)
    return out[0], out[1]


@pytest.fixture
def probe_file(tmp_path: Path) -> Path:
    path = tmp_path / "probe.txt"
    path.write_text("\n".join(PROBE) + "\n", encoding="utf-8")
    return path


def _measurement(latencies: list[float], tokens: int, *, repeats: int = 3) -> Measurement:
    """A synthetic measurement: one latency per prompt (slightly jittered per repeat), fixed output length."""
    samples = tuple(
        RequestSample(p, r, lat * (1 + 0.01 * r), lat / 4, 6, tokens, True)
        for p, lat in enumerate(latencies)
        for r in range(repeats)
    )
    settings = {
        "max_new_tokens": 64,
        "generation_kwargs": {},
        "apply_chat_template": False,
        "num_prompts": len(latencies),
        "prompts_sha256": prompts_sha256(PROBE[: len(latencies)], False),
        "repeats": repeats,
    }
    return Measurement(samples=samples, settings=settings, model={"name_or_path": "synthetic"})


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    """base.json and tuned.json: the tuned model is 50% slower and answers with twice the tokens."""
    base = _measurement([0.10, 0.12, 0.14], tokens=10)
    tuned = _measurement([0.15, 0.18, 0.21], tokens=20)
    return str(base.save(tmp_path / "base.json")), str(tuned.save(tmp_path / "tuned.json"))


def _widest(text: str) -> int:
    """The widest line that holds no file path (paths are printed whole, however long tmp_path is)."""
    return max(len(line) for line in text.splitlines() if "/" not in line)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("ftcallback: error: ")
    return lines[0]


# ----------------------------------------------------------------------------- measure
def test_measure_saves_a_baseline_the_callback_accepts(
    models: tuple[Path, Path], probe_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "baseline.json"
    assert main(["measure", str(models[0]), "--prompts", str(probe_file), *FAST, "--json", str(out)]) == 0

    captured = capsys.readouterr()
    for label in (
        "latency p50", "latency p90", "latency p95", "latency p99", "TTFT p50", "TPOT p50",
        "output tokens mean", "output tokens p95", "input tokens mean", "throughput", "EOS fraction",
        "truncated fraction", "noise CV", "requests", "warm-up first call",
    ):  # fmt: skip
        assert label in captured.out
    assert _widest(captured.out) <= 100
    assert "loading" in captured.err and "measuring" in captured.err  # progress goes to stderr

    m = Measurement.load(out)
    assert len(m.samples) == len(PROBE) * 2
    assert m.settings["max_new_tokens"] == 4
    assert all(s.output_tokens <= 4 for s in m.samples)
    EfficiencyCallback(PROBE, baseline=out, max_new_tokens=4)  # accepted: same probe, same settings
    with pytest.raises(BaselineError, match="max_new_tokens"):
        EfficiencyCallback(PROBE, baseline=out, max_new_tokens=8)


def test_measure_quiet_prints_no_progress(
    models: tuple[Path, Path], probe_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["measure", str(models[0]), "--prompts", str(probe_file), *FAST, "-q"]) == 0
    captured = capsys.readouterr()
    assert "latency p50" in captured.out
    assert captured.err == ""


# ----------------------------------------------------------------------------- compare
@pytest.mark.parametrize(
    ("budget", "code", "verdict"),
    [
        ([], 0, "SHIP"),
        (["--latency-ms", "500", "--max-token-increase", "2.0"], 0, "SHIP"),
        (["--max-token-increase", "0.2"], 1, "DO NOT SHIP"),
        (["--max-latency-increase", "0.25", "--latency-stat", "p50"], 1, "DO NOT SHIP"),
        (["--output-price-per-1k", "0.002", "--max-cost-increase", "0.5"], 1, "DO NOT SHIP"),
    ],
)
def test_compare_measurement_files(
    pair: tuple[str, str], budget: list[str], code: int, verdict: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", *pair, *budget]) == code
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert verdict in lines
    assert "output tokens mean" in out and "latency p95" in out
    assert max(len(line) for line in lines) <= 100
    if code == 1:
        assert "budgets:" in out and "cause:" in out and "remedies:" in out


def test_compare_json_and_accuracy(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", *pair, "--max-token-increase", "0.2", "--accuracy", "0.80", "0.84", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["ship"] is False
    assert data["budget"] == {"latency_stat": "p95", "max_token_increase": 0.2}
    assert data["accuracy"] == [0.80, 0.84]
    assert data["violations"] == ["output_tokens_mean 20.0 exceeds budget 12.0 (baseline 10.0, +100%)"]
    assert {r["metric"] for r in data["rows"]} >= {"latency p95", "output tokens mean", "accuracy"}


def test_compare_two_models_measures_both_the_same_way(
    models: tuple[Path, Path], probe_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", str(models[0]), str(models[1]), "--prompts", str(probe_file), *FAST]
    assert main([*argv, "--output-tokens", "100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ship"] is True and data["incompatible"] == []
    assert main([*argv, "--output-tokens", "1"]) == 1  # every response is longer than one token
    assert "DO NOT SHIP" in capsys.readouterr().out


def test_compare_model_against_saved_measurement_inherits_its_settings(
    models: tuple[Path, Path], probe_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.json"
    assert (
        main(["measure", str(models[0]), "--prompts", str(probe_file), *FAST, "--json", str(base), "-q"]) == 0
    )
    capsys.readouterr()
    # No --max-new-tokens / --repeats: they come from base.json, so the two sides are comparable.
    assert main(["compare", str(base), str(models[1]), "--prompts", str(probe_file), "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["incompatible"] == []


def test_compare_warns_when_measure_flags_are_ignored(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", *pair, "--max-new-tokens", "8"]) == 0
    assert "warning: --max-new-tokens ignored" in capsys.readouterr().err


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "{base}", "{tuned}", "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["compare", "{base}", "{tuned}", "--max-latency-increase", "-0.1"],
            "--max-latency-increase must be > 0",
        ),
        (["compare", "{base}", "{tuned}", "--latency-ms", "fast"], "must be a number, got 'fast'"),
        (["compare", "{base}", "{tuned}", "--latency-stat", "p42"], "invalid choice: 'p42'"),
        (["compare", "{base}", "{tuned}", "--accuracy", "0.8"], "expected 2 arguments"),
        (["compare", "{base}", "{tuned}", "--accuracy", "5", "500"], "--accuracy values must be in"),
        (["compare", "{base}", "{missing}"], "cannot read FINETUNED measurement"),
        (["compare", "{corrupt}", "{tuned}"], "BASE measurement .* is not valid JSON"),
        (["compare", "{notmeasurement}", "{tuned}"], "not an ftcallback measurement"),
        (["compare", "{base}", "{nomodel}"], "--prompts FILE is required"),
        (["compare", "{base}", "{nomodel}", "--prompts", "{probe}"], "model folder .* does not exist"),
        (["measure", "{nomodel}", "--prompts", "{probe}"], "model folder .* does not exist"),
        (["measure", "{tmp}", "--prompts", "{probe}"], "has no config.json"),
        (["measure", "smollm2"], "required: --prompts"),
        (["measure", "smollm2", "--prompts", "{tmp}/nope.txt"], "does not exist"),
        (["measure", "smollm2", "--prompts", "{probe}", "--repeats", "0"], "must be >= 1, got 0"),
        (["measure", "smollm2", "--prompts", "{probe}", "--dtype", "int3"], "invalid choice: 'int3'"),
        (["measure", "smollm2", "--prompts", "{probe}", "--device", "tpu:x"], "is not a torch device"),
        (["measure", "smollm2", "--prompts", "{probe}", "--json", "{tmp}/out.txt"], "must end with .json"),
        (["report", "{tmp}/nope"], "does not exist"),
        (["report", "{tmp}"], "cannot read report"),
        (["report", "{corrupt}"], "not valid JSON"),
        ([], "the following arguments are required: COMMAND"),
        (["train"], "invalid choice: 'train'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str],
    message: str,
    pair: tuple[str, str],
    probe_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "corrupt.json").write_text('{"samples": [1, 2', encoding="utf-8")
    (tmp_path / "other.json").write_text('{"hello": "world"}', encoding="utf-8")
    names = {
        "base": pair[0],
        "tuned": pair[1],
        "missing": str(tmp_path / "missing.json"),
        "corrupt": str(tmp_path / "corrupt.json"),
        "notmeasurement": str(tmp_path / "other.json"),
        "nomodel": str(tmp_path / "no-such-model"),
        "probe": str(probe_file),
        "tmp": str(tmp_path),
    }
    assert main([a.format(**names) for a in argv]) == 2
    line = _error_line(capsys)
    assert re.search(message, line), line


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "measure" in capsys.readouterr().out
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-latency-increase" in out and "Exit code 0: ship" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ftcallback ")


def test_python_dash_m(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # runpy runs ftcallback/__main__.py exactly as `python -m ftcallback` does, without a second
    # interpreter paying the transformers import again.
    monkeypatch.setattr(sys, "argv", ["ftcallback", "compare", "a.json"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("ftcallback", run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "ftcallback: error: the following arguments are required: FINETUNED (see `ftcallback compare --help`)"
    )


# ----------------------------------------------------------------------------- report
def _check(index: int, step: int, p50: float, tokens: float, **kw: object) -> CheckRecord:
    summary = {
        "latency_ms_p50": p50,
        "latency_ms_p95": p50 * 1.2,
        "ttft_ms_p50": p50 / 4,
        "output_tokens_mean": tokens,
    }
    kw.update(index=index, kind="epoch", epoch=step / 10, step=step, summary=summary)
    return CheckRecord(**kw)  # type: ignore[arg-type]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run that stayed within budget for an epoch, had a failed measurement, then breached and stopped."""
    base = _measurement([0.10, 0.12, 0.14], tokens=10)
    report = RunReport(
        budget={"max_token_increase": 0.2},
        baseline=base.to_dict(),
        baseline_source="measured at train begin",
        output_dir=str(tmp_path),
    )
    report.add_check(
        CheckRecord(
            index=0, kind="baseline", epoch=0.0, step=0, summary=base.summary(), measurement=base.to_dict()
        )
    )
    ok = {"metric": "output_tokens_mean", "value": 11.0, "limit": 12.0, "baseline": 10.0, "passed": True}
    report.add_check(_check(1, 10, 121.0, 11.0, verdict=[ok]))
    report.record_checkpoint(10, tmp_path / "checkpoint-10")
    report.add_check(
        CheckRecord(index=2, kind="step", epoch=1.5, step=15, status="failed", error="RuntimeError: OOM")
    )
    breach = {**ok, "value": 19.0, "passed": False}
    report.add_check(_check(3, 20, 180.0, 19.0, verdict=[breach], breached=True, consecutive_breaches=1))
    report.record_checkpoint(20, tmp_path / "checkpoint-20")
    report.stopped = {
        "epoch": 2.0,
        "step": 20,
        "budget": "max_token_increase",
        "reason": "budget_breached",
        "message": "stopping training at epoch 2 (step 20): output_tokens_mean 19.0 exceeds budget 12.0",
        "recommended_checkpoint": str(tmp_path / "checkpoint-10"),
    }
    report.save()
    for step in (10, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
    history = [
        {"loss": 2.5, "step": 5},
        {"loss": 2.0, "step": 10},
        {"eval_loss": 2.2, "eval_runtime": 0.1, "step": 10},
        {"loss": 1.5, "step": 20},
    ]
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"log_history": history[:3]}))
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return tmp_path


def test_report_table(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert _widest(out) <= 100
    assert str(run_dir / "checkpoint-20" / "trainer_state.json") in out  # the latest checkpoint's log
    row = {
        line.split()[0] + line.split()[2]: line
        for line in lines
        if line.startswith(("baseline ", "epoch ", "step "))
    }
    assert set(row) == {"baseline0", "epoch10", "step15", "epoch20"}
    assert "2.0000" in row["epoch10"] and "2.2" in row["epoch10"] and "ok" in row["epoch10"]
    assert "failed: RuntimeError:" in row["step15"]  # the verdict column wraps the rest
    assert "1.5000" in row["epoch20"] and "BREACH" in row["epoch20"]
    assert "stopped: stopping training at epoch 2 (step 20)" in out
    assert f"last within-budget checkpoint: {run_dir / 'checkpoint-10'}" in out


def test_report_accepts_the_report_file_and_prefers_run_dir_trainer_state(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 9.25, "step": 10}]}))
    assert main(["report", str(run_dir / "efficiency" / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "9.2500" in out and f"loss:     {run_dir / 'trainer_state.json'}" in out


def test_report_json(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["step"] for c in data["checks"]] == [0, 10, 15, 20]
    assert [c["status"] for c in data["checks"]] == ["ok", "ok", "failed", "ok"]
    assert [c["within_budget"] for c in data["checks"]] == [True, True, None, False]
    assert data["checks"][1]["loss"] == 2.0 and data["checks"][1]["eval_loss"] == 2.2
    assert data["checks"][3]["output_tokens_mean"] == 19.0
    assert data["checks"][3]["breaches"][0]["metric"] == "output_tokens_mean"
    # The ratio a relative latency budget decides on has its own field, null here (a token budget only).
    assert {"latency_ratio", "latency_judged_ratio", "machine_factor"} <= set(data["checks"][3])
    assert data["checks"][3]["latency_judged_ratio"] is None
    assert data["checks"][2]["latency_ms_p50"] is None  # failed: nothing measured, null not NaN
    assert data["stopped"]["step"] == 20
    assert data["last_within_budget_checkpoint"] == str(run_dir / "checkpoint-10")
    assert data["baseline"]["output_tokens_mean"] == 10.0


def test_report_survives_a_corrupt_trainer_state(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / "checkpoint-20" / "trainer_state.json").write_text("{not json")
    assert main(["report", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "warning: ignoring" in captured.err and "without loss" in captured.err
    assert "BREACH" in captured.out


def test_report_plot(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plots" / "run.png"
    assert main(["report", str(run_dir), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    assert "wrote the plot" in capsys.readouterr().err


def test_report_plot_with_bad_suffix_is_a_usage_error(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run_dir), "--plot", str(run_dir / "x.docx"), "-q"]) == 2
    assert "cannot write a plot as '.docx'" in _error_line(capsys)


# ----------------------------------------------------------------------------- parser and budget files
def test_budget_flags_are_generated_from_every_budget_field(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from ftcallback import Budget
    from ftcallback.cli._parser import BUDGET_FLAGS

    names = [f.name for f in dataclasses.fields(Budget)]
    assert [name for _, name in BUDGET_FLAGS] == names
    for command in ("measure", "compare"):
        assert main([command, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        for flag, _ in BUDGET_FLAGS:
            assert flag in out, (command, flag)
        assert "--budget FILE" in out
        # Help comes from the Budget docstring, not just the name.
        assert "judged prompt by prompt" in out and "price of 1000 output tokens" in out


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_compare_budget_file_and_flag_override(
    pair: tuple[str, str], tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"budget{suffix}"
    text = "max_token_increase = 0.2\nlatency_ms = 500\n" if suffix == ".toml" else (
        '{"max_token_increase": 0.2, "latency_ms": 500}'
    )
    path.write_text(text, encoding="utf-8")
    assert main(["compare", *pair, "--budget", str(path), "--json"]) == 1  # tokens doubled: over +20%
    data = json.loads(capsys.readouterr().out)
    assert data["budget"] == {"latency_ms": 500.0, "latency_stat": "p95", "max_token_increase": 0.2}
    # A flag given as well overrides the file's value and keeps the others.
    assert main(["compare", *pair, "--budget", str(path), "--max-token-increase", "2.0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["budget"] == {"latency_ms": 500.0, "latency_stat": "p95", "max_token_increase": 2.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_tokens_increase = 0.2\n", r"budget file '.*budget\.toml': unknown budget field\(s\) max_tokens_increase"),
        ("latency_ms = -5\n", r"budget file '.*budget\.toml': `latency_ms` must be > 0"),
        ("latency_ms = [\n", r"budget file '.*budget\.toml' is not valid TOML"),
    ],
)
def test_budget_file_errors_name_the_file_and_field(
    pair: tuple[str, str], tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "budget.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["compare", *pair, "--budget", str(path)]) == 2
    line = _error_line(capsys)
    assert re.search(message, line), line


def test_measure_checks_an_absolute_budget(
    models: tuple[Path, Path], probe_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = tmp_path / "budget.toml"
    budget.write_text("output_tokens = 1\n", encoding="utf-8")
    argv = ["measure", str(models[0]), "--prompts", str(probe_file), *FAST, "-q"]
    assert main([*argv, "--budget", str(budget)]) == 1  # every response is longer than one token
    out = capsys.readouterr().out
    assert "output_tokens_mean" in out and "exceeds budget 1.0" in out and "OVER BUDGET" in out
    assert main([*argv, "--budget", str(budget), "--output-tokens", "100"]) == 0
    assert "within budget" in capsys.readouterr().out


# ----------------------------------------------------------------------------- forgiving errors
def _run_in_fresh_python(code: str, tmp_path: Path) -> str:
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=tmp_path
    )
    return proc.stdout.strip()


def test_help_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    code = (
        "import sys, contextlib, io\n"
        "from ftcallback.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [main(['--help']), main(['measure', '--help']), main(['compare', '--help'])]\n"
        "print(codes, sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    assert _run_in_fresh_python(code, tmp_path) == "[0, 0, 0] []"


def test_a_mistyped_model_name_suggests_the_known_one_without_transformers(
    probe_file: Path, tmp_path: Path
) -> None:
    code = (
        "import sys, contextlib, io\n"
        "from ftcallback.cli import main\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        f"    code = main(['measure', 'smolm2', '--prompts', {str(probe_file)!r}])\n"
        "print(code, 'transformers' in sys.modules, 'torch' in sys.modules)\n"
        "print(err.getvalue().strip())"
    )
    first, message = _run_in_fresh_python(code, tmp_path).splitlines()
    assert first == "2 False False"
    assert message == "ftcallback: error: unknown model 'smolm2'; did you mean 'smollm2'?"


def test_a_hub_id_missing_from_the_offline_cache_says_the_hub_is_offline(
    probe_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["measure", "no-such-org/no-such-model", "--prompts", str(probe_file), *FAST, "-q"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "the hub is offline (HF_HUB_OFFLINE=1)" in line, line
    assert "internet connection" not in line


@pytest.mark.parametrize(("name", "text"), [("empty.txt", ""), ("blank.txt", "\n  \n"), ("empty.jsonl", "")])
def test_an_empty_prompts_file_is_named(
    name: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert main(["measure", "smollm2", "--prompts", str(path)]) == 2
    line = _error_line(capsys)
    assert f"prompts file {str(path)!r} holds no prompts" in line, line


def test_warnings_print_one_line_without_source(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from ftcallback.cli._console import cli_console

    with cli_console(0, False):
        text = warnings.formatwarning("timing is\nnoisy", UserWarning, "/x/measure.py", 3, "m = measure(")
    assert text == "ftcallback: warning: timing is noisy (UserWarning)\n"
    assert "measure(" in warnings.formatwarning("w", UserWarning, "/x/measure.py", 3, "m = measure(")


def test_foreign_progress_bars_are_off_while_loading_and_restored() -> None:
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from ftcallback.cli._console import no_foreign_progress_bars

    original = gguf_utils.tqdm
    assert hf_logging.is_progress_bar_enabled()
    with no_foreign_progress_bars():
        assert not hf_logging.is_progress_bar_enabled()
        assert gguf_utils.tqdm([1, 2], desc="x").disable
    assert hf_logging.is_progress_bar_enabled()
    assert gguf_utils.tqdm is original


# ----------------------------------------------------------------------------- report without trainer_state
def test_report_shows_the_recorded_loss_without_a_trainer_state(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in (10, 20):
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").unlink()
    report = RunReport.load(run_dir / "efficiency" / "report.json")
    for check, loss in zip(report.checks, (None, 2.0, None, 1.5), strict=True):
        check.loss = loss
    report.save()

    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "loss:     recorded in the report (no trainer_state.json found)" in out
    row = {line.split()[0] + line.split()[2]: line for line in out.splitlines() if line.startswith("epoch ")}
    assert "2.0000" in row["epoch10"] and "1.5000" in row["epoch20"]

    assert main(["report", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["loss"] for c in data["checks"]] == [None, 2.0, 2.0, 1.5]  # last logged at or before the step


# ----------------------------------------------------------------------------- issue #11: the seed situation
def _seed_pair(tmp_path: Path) -> tuple[str, str]:
    """Latency 200 ms -> 800 ms per request, 150 output tokens on both sides, every answer ends with EOS."""
    paths = []
    for name, latency in (("base", 0.2), ("new", 0.8)):
        samples = tuple(RequestSample(p, r, latency, 0.05, 40, 150, True) for p in range(3) for r in range(3))
        m = Measurement(samples=samples, settings=_measurement([0.1] * 3, 10).settings, model={"dtype": "bfloat16"})
        paths.append(str(m.save(tmp_path / f"{name}.json")))
    return paths[0], paths[1]


# 1M requests a month at 0.03 / 1k input and 0.02 / 1k output tokens: 40 x 0.03 + 150 x 0.02 = 4.2 per
# 1000 requests, a 4200 monthly bill against a 5000 budget.
SEED_PRICES = ["--requests-per-month", "1000000", "--input-price-per-1k", "0.03", "--output-price-per-1k", "0.02"]


def test_seed_situation_answers_like_an_engineer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, new = _seed_pair(tmp_path)
    argv = ["compare", base, new, "--latency-ms", "400", "--monthly-cost", "5000", *SEED_PRICES]
    assert main([*argv, "--accuracy", "0.87", "0.91"]) == 1
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "DO NOT SHIP" in out
    assert "latency p95 breaks the 400 ms SLA (800 ms > 400 ms)" in out
    assert "Token efficiency is neutral (output tokens +0%), so cost is unchanged and within budget." in out
    assert "The problem is pure latency" in out
    assert "monthly cost 4200 within 5000, unchanged vs base 4200" in out
    assert "+4.0 points of accuracy for +300% latency (p95 800 ms, was 200 ms): breaks the 400 ms SLA" in out
    for remedy in ("Quantize", "Prune layers", "distil", "merge_and_unload"):
        assert remedy in out
    assert "smaller dtype" not in out  # measured in bfloat16 already
    assert "max_new_tokens" not in out.split("remedies:")[1]  # every answer ends with EOS: never truncate


def test_seed_situation_without_prices_names_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, new = _seed_pair(tmp_path)
    argv = ["compare", base, new, "--latency-ms", "400", "--monthly-cost", "5000", "--accuracy", "0.87", "0.91"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())
    assert (
        "monthly cost not evaluated: needs --requests-per-month and a price "
        "(--input-price-per-1k/--output-price-per-1k or --gpu-price-per-hour); token cost per request is "
        "unchanged whatever the prices (same input and output tokens)"
    ) in out
    assert captured.err.count("--monthly-cost not evaluated: needs --requests-per-month") == 1
    # A budget on the cost change needs no price when the token counts decide it.
    assert main(["compare", base, new, "--latency-ms", "400", "--max-cost-increase", "0.05", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [c["passed"] for c in data["verdict"]["checks"]] == [False, True]


def test_self_hosted_pricing_makes_latency_a_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, new = _seed_pair(tmp_path)
    # 0.2 s x 3.6 / 3600 = 0.0002 per request, 200 a month; 0.8 s: 800 a month, over a 500 budget.
    argv = ["compare", base, new, "--gpu-price-per-hour", "3.6", "--requests-per-month", "1000000"]
    assert main([*argv, "--monthly-cost", "500", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["statuses"] == ["monthly cost 800.0 exceeds 500.0, +300% vs base 200.0"]
    assert data["causes"][0].startswith("monthly cost: self-hosted cost follows latency; answers are as long")
    rows = {r["metric"]: r for r in data["rows"]}
    assert rows["cost per 1M out tokens"]["base"] == pytest.approx(0.0002 / 150 * 1e6)


def test_compare_refuses_mismatched_measurements(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _measurement([0.1, 0.1, 0.1], tokens=10)
    other = dataclasses.replace(
        base, settings={**base.settings, "max_new_tokens": 8, "prompts_sha256": "another probe"}
    )
    a, b = str(base.save(tmp_path / "a.json")), str(other.save(tmp_path / "b.json"))
    assert main(["compare", a, b]) == 2
    err = _error_line(capsys)
    assert "cannot be compared" in err and "--allow-mismatch" in err
    assert "prompts_sha256 is" in err and "max_new_tokens is 64 in the baseline but 8 here" in err

    assert main(["compare", a, b, "--allow-mismatch", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert len(data["incompatible"]) == 2 and len(data["warnings"]) == 2
    assert "max_new_tokens is 64 in the baseline but 8 here" in captured.err
    assert main(["compare", a, b, "--allow-mismatch"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.out and captured.err.count("ftcallback: warning: compared anyway") == 2


def test_compare_rejects_a_measurement_whose_summary_was_edited(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(Path(pair[1]).read_text())
    data["summary"]["output_tokens_mean"] = 5.0
    Path(pair[1]).write_text(json.dumps(data))
    assert main(["compare", *pair]) == 2
    err = _error_line(capsys)
    assert "FINETUNED measurement" in err and "tuned.json" in err
    assert "field 'summary.output_tokens_mean' is 5.0 but the samples give 20.0" in err


def test_measure_scores_references_from_a_jsonl_probe(
    models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = tmp_path / "probe.jsonl"
    lines = [{"prompt": PROBE[0], "reference": "nothing like it"}, {"prompt": PROBE[1]}]
    probe.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    out_json = tmp_path / "m.json"
    argv = ["measure", str(models[0]), "--prompts", str(probe), *FAST, "--scorer", "contains", "--json", str(out_json)]
    assert main([*argv, "-q"]) == 0
    assert re.search(r"quality \(contains, 1 refs\)\s+0\.000  score", capsys.readouterr().out)
    saved = Measurement.load(out_json)
    assert saved.quality == 0.0 and saved.settings["scorer"] == "contains"
    # compare then uses the measured quality as the accuracy of both sides.
    assert main(["compare", str(out_json), str(out_json), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"] == [0.0, 0.0] and data["accuracy_source"] == "measured"


def test_compare_from_figures_without_files(capsys: pytest.CaptureFixture[str]) -> None:
    base, new = "latency_ms=200,output_tokens=150", "latency_ms=800, output_tokens=150"
    argv = ["compare", base, new, "--latency-ms", "400", "--max-cost-increase", "0.05", "--accuracy", "0.87", "0.91"]
    assert main(argv) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "latency p95 breaks the 400 ms SLA (800 ms > 400 ms)" in out
    assert "so cost is unchanged and within budget" in out
    assert main(["compare", "latency=200", new]) == 2
    assert "BASE 'latency=200': unknown figure 'latency'" in _error_line(capsys)
    assert main(["compare", "latency_ms=200", new]) == 2
    assert "output_tokens missing" in _error_line(capsys)
    assert main(["compare", "latency_ms=fast,output_tokens=3", new]) == 2
    assert "latency_ms must be a number, got 'fast'" in _error_line(capsys)
