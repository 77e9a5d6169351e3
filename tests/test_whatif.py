"""What-if remedies: the fine-tuned model measured in each deployed form, judged against the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcallback import Budget
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._whatif import what_if
from ftcallback.cli import main
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

FAST = ["--max-new-tokens", "4", "--repeats", "1", "--warmup", "0"]


def _m(latency: float, tokens: int = 40, form: str | None = None) -> Measurement:
    return Measurement(
        samples=(RequestSample(0, 0, latency, 0.05, 20, tokens, True),),
        environment={"form": form} if form else {},
    )


def test_what_if_names_the_form_that_brings_the_model_within_budget():
    w = what_if(
        _m(0.30),
        _m(0.812),
        {"int8": _m(0.388, form="int8"), "bf16": _m(0.95, form="bf16"), "merged": "no adapters"},
        Budget(latency_ms=400),
    )
    assert w.within_budget == ["int8"]
    assert [r.status for r in w.rows] == ["over budget", "within budget", "over budget", "n/a"]
    assert w.sentences == (
        "int8 brings latency p95 from 812 to 388 ms: within the 400 ms budget",
        "bf16 brings latency p95 from 812 to 950 ms: still over budget "
        "(latency_ms_p95 950.0 exceeds budget 400.0 (baseline 300.0, +217%))",
        "merged does not apply: no adapters",
    )
    table = w.format_table()
    assert "latency p95 (ms)" in table and "n/a: no adapters" in table


def test_what_if_says_when_no_form_helps():
    w = what_if(_m(0.3), _m(0.5, tokens=90), {"int8": _m(0.2, tokens=90)}, Budget(max_token_increase=0.2))
    assert w.within_budget == []
    assert w.sentences[0].startswith("int8 brings output tokens mean from 90.0 to 90.0: still over budget")
    assert w.sentences[-1] == "No form measured brings the model within budget."


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model and a LoRA adapter folder on it (trained-looking: B is not zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("whatif")
    tok = tiny_tokenizer()
    tiny_causal_lm("llama").save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(root / "adapter")
    (root / "probe.txt").write_text("the model returns\na user measures\n", encoding="utf-8")
    return {"base": root / "base", "adapter": root / "adapter", "probe": root / "probe.txt"}


def _compare(folders, finetuned, *extra, capsys):
    argv = ["compare", str(folders["base"]), str(finetuned), "--prompts", str(folders["probe"]), *FAST, "-q"]
    code = main([*argv, *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_compare_what_if_measures_each_form_of_a_lora_adapter_folder(folders, capsys):
    # The base has no adapters: compare calls that another way of running (latency not comparable) and wants
    # --allow-mismatch; the forms themselves are judged against the base regardless.
    code, out = _compare(
        folders, folders["adapter"], "--what-if", "merge,int8,bf16", "--latency-ms", "1000000", "--json",
        "--allow-mismatch", capsys=capsys,
    )
    assert code == 0
    data = json.loads(out[: out.rindex("}") + 1])["what_if"]
    assert [r["form"] for r in data["rows"]] == ["as is", "merged", "int8", "bf16"]
    assert [r["environment"].get("form") for r in data["rows"][1:]] == ["merged", "int8", "bf16"]
    assert data["within_budget"] == ["merged", "int8", "bf16"]
    assert all(r["summary"]["output_tokens_mean"] > 0 for r in data["rows"])
    assert data["sentences"][0].startswith("merged brings latency p95 from ")
    assert data["sentences"][0].endswith("ms: within the 1000000 ms budget")

    code, out = _compare(
        folders, folders["adapter"], "--what-if", "int8", "--output-tokens", "1", "--allow-mismatch", capsys=capsys
    )
    assert code == 1
    assert "what if FINETUNED were served as:" in out
    assert "No form measured brings the model within budget." in out


def test_what_if_merged_on_a_model_without_adapters_says_so(folders, capsys):
    code, out = _compare(folders, folders["base"], "--what-if", "merged", capsys=capsys)
    assert code == 0
    assert "merged does not apply: form 'merged' needs a model with unmerged PEFT adapters" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--what-if", "int4"], "unknown form 'int4'"),
        (["--what-if", "merged+int8"], "cannot combine int8"),
    ],
)
def test_what_if_usage_errors(folders, capsys, args, message):
    code, out = _compare(folders, folders["base"], *args, capsys=capsys)
    assert code == 2 and message in out


def test_what_if_needs_a_model_not_a_saved_measurement(folders, tmp_path, capsys):
    saved = tmp_path / "tuned.json"
    _m(0.5).save(saved)
    code, out = _compare(folders, saved, "--what-if", "int8", capsys=capsys)
    assert code == 2 and "--what-if measures FINETUNED in each form, so FINETUNED must be a model" in out


def test_sentences_name_the_ratio_that_decides_a_relative_latency_budget():
    def m(latencies, form=None):
        samples = tuple(
            RequestSample(p, r, lat, 0.05, 20, 40, True) for p, lat in enumerate(latencies) for r in range(3)
        )
        return Measurement(samples=samples, environment={"form": form} if form else {})

    base, new, fast = m([0.2, 0.3, 0.4]), m([0.4, 0.5, 0.9]), m([0.2, 0.31, 0.41], "int8")
    w = what_if(base, new, {"int8": fast}, Budget(max_latency_increase=0.2))
    # A relative latency budget decides on the paired ratio to the base: the sentence names that ratio.
    assert w.sentences[0] == "int8 brings latency judged ratio from x1.957 to x1.019: within the x1.200 budget"
    assert w.within_budget == ["int8"]
    assert "900.0" in w.format_table() and "410.0" in w.format_table()  # p95 of as-is and int8


def test_a_form_is_judged_against_the_base_although_it_changes_the_dtype():

    def m(latency, dtype, form=None):
        samples = tuple(RequestSample(p, r, latency, 0.05, 20, 40, True) for p in range(3) for r in range(3))
        return Measurement(samples=samples, model={"param_dtype": dtype, "compute_dtype": dtype},
                           environment={"form": form} if form else {})

    base, new = m(0.2, "float32"), m(0.4, "float32")
    fast = m(0.21, "bfloat16", "bf16")
    w = what_if(base, new, {"bf16": fast}, Budget(max_latency_increase=0.2))
    assert [c.passed for c in w.rows[1].verdict.checks] == [True]
    assert w.within_budget == ["bf16"]
