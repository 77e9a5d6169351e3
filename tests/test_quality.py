"""Quality from the probe's own generations: references, scorers, measure(), budgets, Pareto, saved summaries."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from ftcallback._budget import Budget, evaluate
from ftcallback._errors import BaselineError, ConfigError, PromptError
from ftcallback._measure import measure
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._pareto import ParetoPoint, pareto
from ftcallback._prompts import ProbePrompts, load_probe, load_prompts
from ftcallback._quality import NumericMatch, normalize_answer, resolve_scorer, score_outputs

FAST: dict[str, Any] = {"max_new_tokens": 4, "repeats": 2, "warmup": 0}
FAST_REAL: dict[str, Any] = {"repeats": 1, "warmup": 0}


# ----------------------------------------------------------------- scorers
@pytest.mark.parametrize(
    ("scorer", "output", "reference", "score"),
    [
        ("exact", "The Eiffel Tower!", "eiffel tower", 1.0),
        ("exact", "  PARIS. ", "paris", 1.0),
        ("exact", "Paris, France", "paris", 0.0),
        ("exact_match", "an apple", "Apple", 1.0),
        ("contains", "It is Paris, of course.", "paris", 1.0),
        ("contains", "Parisian", "paris", 0.0),  # whole words only
        ("regex", "answer: 42 apples", r"\b42\b", 1.0),
        ("regex", "answer: 420", r"\b42\b", 0.0),
        ("numeric", "2 + 2 = 4.0", "#### 4", 1.0),
        ("numeric", "it costs 1,234.5 dollars", "1234.5", 1.0),
        ("numeric", "first 4 then 5", "4", 0.0),  # the last number counts
        ("numeric", "no idea", "4", 0.0),
        ("numeric", "-3", "-3", 1.0),
    ],
)
def test_builtin_scorers(scorer, output, reference, score):
    assert resolve_scorer(scorer)[1]("prompt", output, reference) == score


def test_normalize_answer_is_squad_normalisation():
    assert normalize_answer("  The  Cat, a Hat and AN owl. ") == "cat hat and owl"


def test_numeric_tolerance():
    assert NumericMatch(tolerance=0.01)("", "3.14", "3.1416") == 1.0
    assert NumericMatch()("", "3.14", "3.1416") == 0.0
    with pytest.raises(ConfigError, match=r"`tolerance` must be a finite number >= 0, got -1"):
        NumericMatch(tolerance=-1)
    with pytest.raises(ConfigError, match=r"scorer 'numeric': reference 'four' holds no number"):
        NumericMatch()("", "4", "four")


def test_regex_scorer_names_a_bad_pattern():
    with pytest.raises(ConfigError, match=r"scorer 'regex': reference '\(' is not a valid regular expression"):
        resolve_scorer("regex")[1]("", "x", "(")


def test_resolve_scorer_names_and_errors():
    assert resolve_scorer(None)[0] == "exact"

    def my_score(prompt: str, output: str, reference: str) -> float:
        return 0.5

    assert resolve_scorer(my_score) == ("my_score", my_score)
    assert resolve_scorer(NumericMatch(tolerance=0.1))[0] == "numeric(tolerance=0.1)"
    with pytest.raises(ConfigError, match=r"`scorer` must be one of 'exact', .*'numeric' or a callable.*'bleu'"):
        resolve_scorer("bleu")
    with pytest.raises(ConfigError, match=r"`scorer` must be a name .* got int"):
        resolve_scorer(3)  # type: ignore[arg-type]


def test_score_outputs_skips_prompts_without_reference_and_checks_what_a_scorer_returns():
    scores = score_outputs(["a", "b", "c"], ["x", "y", "z"], ["x", None, "q"], lambda p, o, r: o == r)
    assert scores[0] == 1.0 and math.isnan(scores[1]) and scores[2] == 0.0
    with pytest.raises(
        ConfigError, match=r"scorer '<lambda>' must return a finite number, got 'yes' \(str\) for prompts\[0\]"
    ):
        score_outputs(["a"], ["x"], ["x"], lambda p, o, r: "yes")
    with pytest.raises(ConfigError, match=r"must return a finite number, got nan"):
        score_outputs(["a"], ["x"], ["x"], lambda p, o, r: math.nan)
    with pytest.raises(ConfigError, match=r"`references` must have one entry per prompt, got 1 for 2 prompts"):
        score_outputs(["a", "b"], ["x", "y"], ["x"])


# ----------------------------------------------------------------- references on prompts
def test_load_probe_from_python_pairs_dicts_and_strings():
    probe = load_probe([("2 + 2 =", "4"), {"prompt": "Capital of France?", "reference": "Paris"}, "Say hi."])
    assert probe == ProbePrompts(("2 + 2 =", "Capital of France?", "Say hi."), ("4", "Paris", None))
    assert probe.has_references
    assert load_prompts([("2 + 2 =", "4"), "Say hi."]) == ["2 + 2 =", "Say hi."]  # the old call keeps working
    assert load_probe(["a", "b"]).references is None
    assert load_probe(probe) is probe


def test_load_probe_from_jsonl_with_references(tmp_path):
    path = tmp_path / "probe.jsonl"
    lines = [{"prompt": "2 + 2 =", "reference": "4"}, {"prompt": "Say hi."}, "bare"]
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    assert load_probe(path) == ProbePrompts(("2 + 2 =", "Say hi.", "bare"), ("4", None, None))
    path.write_text(json.dumps({"prompt": "2 + 2 =", "reference": 4}), encoding="utf-8")
    with pytest.raises(PromptError, match=r"line 1: the reference must be a JSON string, got int"):
        load_probe(path)


def test_load_probe_from_a_dataset_reference_column():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["a", "b"], "reference": ["x", None]})
    assert load_probe(ds) == ProbePrompts(("a", "b"), ("x", None))


def test_bad_references_are_named():
    with pytest.raises(PromptError, match=r"the reference of `prompts\[0\]` must be a str or None, got int"):
        load_probe([("q", 4)])
    with pytest.raises(PromptError, match=r"`prompts\[0\]` is a dict without a 'prompt' or 'text' key"):
        load_probe([{"question": "q"}])


# ----------------------------------------------------------------- measure() scores the same generations
class _CountingGenerate:
    def __init__(self, model: Any) -> None:
        self.calls = 0
        self._generate = model.generate
        model.generate = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._generate(*args, **kwargs)


def test_measure_scores_every_prompt_without_extra_generate_calls(gpt2, tokenizer):
    prompts = ["the model returns", "a short prompt", "another prompt here"]
    plain = measure(gpt2, tokenizer, prompts, num_sample_outputs=1, **FAST)
    outputs = {o["prompt_index"]: o["output"] for o in plain.sample_outputs}
    counter = _CountingGenerate(gpt2)
    scored = measure(
        gpt2,
        tokenizer,
        [(prompts[0], outputs[0]), (prompts[1], "surely not this"), prompts[2]],
        num_sample_outputs=1,
        **FAST,
    )
    assert counter.calls == FAST["repeats"] * len(prompts)  # same calls as without references
    assert scored.quality_scores[:2] == (1.0, 0.0) and math.isnan(scored.quality_scores[2])
    assert scored.quality == 0.5 and scored.summary()["quality"] == 0.5
    assert len(scored.sample_outputs) == 1  # only num_sample_outputs are kept, though all were decoded
    assert scored.settings["scorer"] == "exact" and len(scored.settings["references_sha256"]) == 64
    assert "quality" not in plain.summary() and plain.quality_scores == () and "scorer" not in plain.settings
    back = Measurement.from_dict(json.loads(json.dumps(scored.to_dict())))
    assert back.quality_scores[:2] == (1.0, 0.0) and math.isnan(back.quality_scores[2])


def test_measure_takes_explicit_references_and_a_callable_scorer(gpt2, tokenizer):
    m = measure(gpt2, tokenizer, ["a", "b"], references=["x", None], scorer=lambda p, o, r: float(len(o) > 0), **FAST)
    assert m.quality_scores[0] == 1.0 and math.isnan(m.quality_scores[1])
    assert m.settings["scorer"] == "<lambda>"


def test_measure_rejects_a_scorer_without_references_and_references_of_the_wrong_length(gpt2, tokenizer):
    with pytest.raises(ConfigError, match=r"`scorer` is set but no prompt has a reference"):
        measure(gpt2, tokenizer, ["a"], scorer="exact", **FAST)
    with pytest.raises(ConfigError, match=r"`references` must have one entry per prompt, got 1 for 2 prompts"):
        measure(gpt2, tokenizer, ["a", "b"], references=["x"], **FAST)
    with pytest.raises(ConfigError, match=r"`scorer` must be one of"):
        measure(gpt2, tokenizer, [("a", "x")], scorer="bleu", **FAST)


# ----------------------------------------------------------------- budgets on quality
def _scored(quality: list[float], latency: float = 0.2, tokens: int = 37, **settings: Any) -> Measurement:
    samples = tuple(RequestSample(p, 0, latency, 0.05, 20, tokens, True) for p in range(len(quality)))
    base_settings = {"prompts_sha256": "abc", "scorer": "exact", "references_sha256": "ref"}
    return Measurement(samples=samples, quality_scores=tuple(quality), settings={**base_settings, **settings})


def test_min_quality_and_max_quality_drop():
    base, new = _scored([1, 1, 1, 0]), _scored([1, 1, 0, 0])
    minimum, drop = evaluate(Budget(min_quality=0.6, max_quality_drop=0.1), new, base).checks
    assert (minimum.metric, minimum.value, minimum.limit, minimum.passed) == ("quality", 0.5, 0.6, False)
    assert minimum.describe() == "quality 0.500 below minimum 0.600 (baseline 0.750, -0.250)"
    assert minimum.margin == pytest.approx(-0.1 / 0.6)
    assert (drop.limit, drop.passed) == (pytest.approx(0.65), False)
    ok = evaluate(Budget(min_quality=0.5, max_quality_drop=0.25), new, base)
    assert ok.passed and ok.checks[0].describe().startswith("quality 0.500 meets minimum 0.500")
    assert Budget(min_quality=0.6, max_quality_drop=0.1).limits(base) == {"quality": pytest.approx(0.65)}


def test_quality_budgets_without_scores_are_not_evaluable():
    unscored = Measurement(samples=(RequestSample(0, 0, 0.2, 0.05, 20, 37, True),))
    minimum, drop = evaluate(Budget(min_quality=0.5, max_quality_drop=0.1), unscored, unscored).checks
    assert minimum.passed is None and "no probe prompt has a reference" in minimum.detail
    assert drop.passed is None and drop.detail == "the baseline has no quality score (no references)"


# ----------------------------------------------------------------- cost as users state it
def test_self_hosted_cost_follows_latency_and_throughput():
    m = _scored([1.0], latency=0.8, tokens=40)
    budget = Budget(gpu_price_per_hour=3.6, gpu_concurrency=4, requests_per_month=1_000_000, monthly_cost=500)
    # per request = 0.8 s x 3.6 / 3600 / 4 = 0.0002; per 1M output tokens = 0.0002 / 40 x 1e6 = 5.0
    assert budget.cost_per_request_of(m) == pytest.approx(0.0002)
    assert budget.cost_per_1m_output_tokens_of(m) == pytest.approx(5.0)
    check = evaluate(budget, m).checks[0]
    assert (check.value, check.passed) == (pytest.approx(200.0), True)
    assert Budget(gpu_price_per_hour=3.6, gpu_concurrency=4).to_dict() == {
        "latency_stat": "p95",
        "gpu_price_per_hour": 3.6,
        "gpu_concurrency": 4.0,
    }


def test_cost_budgets_without_price_or_volume_say_what_is_missing():
    budget = Budget(monthly_cost=5000, cost_per_request=0.01)
    assert budget.unevaluable == (
        "`cost_per_request` not evaluated: needs a price "
        "(`input_price_per_1k`/`output_price_per_1k` or `gpu_price_per_hour`)",
        "`monthly_cost` not evaluated: needs `requests_per_month` and a price "
        "(`input_price_per_1k`/`output_price_per_1k` or `gpu_price_per_hour`)",
    )
    per_request, monthly = evaluate(budget, _scored([1.0])).checks
    assert per_request.passed is None and monthly.passed is None
    assert monthly.describe() == (
        "monthly_cost not evaluable: needs `requests_per_month` and a price "
        "(`input_price_per_1k`/`output_price_per_1k` or `gpu_price_per_hour`)"
    )
    assert Budget(monthly_cost=5000, output_price_per_1k=0.002).unevaluable == (
        "`monthly_cost` not evaluated: needs `requests_per_month`",
    )
    assert Budget(monthly_cost=5000, output_price_per_1k=0.002, requests_per_month=10).unevaluable == ()


@pytest.mark.parametrize(
    ("new_tokens", "fraction", "passed"),
    [(37, 0.0001, True), (74, 0.5, None), (74, 1.0, True)],
)
def test_cost_increase_without_prices_is_bounded_by_token_ratios(new_tokens, fraction, passed):
    base, new = _scored([1.0]), _scored([1.0], tokens=new_tokens)
    check = evaluate(Budget(max_cost_increase=fraction), new, base).checks[0]
    assert (check.metric, check.passed) == ("token_cost_ratio", passed)
    assert check.interval == (1.0, pytest.approx(new_tokens / 37))
    if passed is None:
        assert "needs a price" in check.detail


def test_cost_increase_without_prices_breaches_when_every_token_count_grew():
    base = _scored([1.0])
    new = Measurement(samples=(RequestSample(0, 0, 0.2, 0.05, 40, 74, True),), settings=base.settings)  # all x2
    check = evaluate(Budget(max_cost_increase=0.5), new, base).checks[0]
    assert check.passed is False and check.value == pytest.approx(2.0)


# ----------------------------------------------------------------- saved summaries
def test_a_summary_edited_by_hand_is_rejected_naming_file_and_field(tmp_path):
    path = _scored([1.0, 0.0]).save(tmp_path / "base.json")
    data = json.loads(path.read_text())
    data["summary"]["latency_ms_p95"] = 100.0
    path.write_text(json.dumps(data))
    with pytest.raises(
        BaselineError,
        match=r"baseline file '.*base\.json': field 'summary\.latency_ms_p95' is 100\.0 but the samples give 200\.0",
    ):
        Measurement.load(path)
    data["summary"]["latency_ms_p95"] = 200.0
    data["summary"]["quality"] = 0.9
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"field 'summary\.quality' is 0\.9 but the samples give 0\.5"):
        Measurement.load(path)


def test_a_file_without_summary_or_quality_scores_still_loads():
    data = _scored([1.0]).to_dict()
    del data["summary"], data["quality_scores"]
    m = Measurement.from_dict(data)
    assert m.quality_scores == () and not m.has_quality


# ----------------------------------------------------------------- references must match to compare quality
def test_quality_settings_count_only_when_both_sides_are_scored():
    a, b = _scored([1.0]), _scored([1.0], references_sha256="other")
    assert [str(p) for p in a.incompatibilities(b)] == [
        "references_sha256 is 'ref' in the baseline but 'other' here; quality is not comparable"
    ]
    unscored = Measurement(samples=a.samples, settings={"prompts_sha256": "abc"})
    assert a.incompatibilities(unscored) == []


# ----------------------------------------------------------------- Pareto
def _p(step: int, quality: float | None, latency: float | None, within: bool, cost: float | None = None):
    return ParetoPoint(step=step, quality=quality, latency_ms=latency, cost=cost, within_budget=within)


def test_pareto_marks_dominated_checks_and_recommends_best_quality_within_budget():
    front = pareto([_p(1, 0.80, 210, True), _p(2, 0.86, 260, True), _p(3, 0.84, 300, True), _p(4, 0.91, 800, False)])
    assert front.dominated == (False, False, True, False)
    assert (front.recommended, front.recommended_step) == (1, 2)
    assert front.reason == "step 2: best quality within budget (0.860, latency 260 ms)"


def test_pareto_ties_go_to_lower_latency_then_earlier_step():
    assert pareto([_p(1, 0.9, 300, True), _p(2, 0.9, 250, True)]).recommended_step == 2
    assert pareto([_p(5, 0.9, 250, True), _p(2, 0.9, 250, True)]).recommended_step == 2


def test_pareto_uses_cost_and_skips_unknown_dimensions():
    # Same quality and latency; the cheaper one dominates. NaN quality is left out of that comparison.
    front = pareto([_p(1, 0.9, 250, True, cost=2.0), _p(2, 0.9, 250, True, cost=1.0), _p(3, math.nan, 250, True, 1.0)])
    assert front.dominated == (True, False, False)


def test_pareto_without_quality_or_within_budget_checks():
    front = pareto([_p(1, None, 200, True), _p(2, None, 300, True), _p(3, None, 900, False)])
    assert front.recommended_step == 2 and "latest check within budget" in front.reason
    none = pareto([_p(1, 0.9, 900, False)])
    assert none.recommended is None and none.recommended_step is None and none.reason == "no check is within budget"
    assert pareto([]).recommended is None


# ----------------------------------------------------------------- the probe spec carries references
def test_probe_spec_with_references_records_and_passes_them():
    from ftcallback._probe import ProbeSpec

    spec = ProbeSpec(prompts=("2 + 2 =", "Say hi."), references=("4", None), scorer="numeric")
    settings = spec.settings()
    assert settings["scorer"] == "numeric" and len(settings["references_sha256"]) == 64
    assert spec.measure_kwargs()["references"] == ["4", None] and spec.measure_kwargs()["scorer"] == "numeric"
    assert ProbeSpec.from_dict(spec.to_dict()) == spec
    assert ProbeSpec(prompts=("a",), references=(None,)).references is None  # no reference at all: not scored
    plain = ProbeSpec(prompts=("a",))
    assert "references" not in plain.to_dict() and "scorer" not in plain.settings()
    assert ProbeSpec(prompts=("a",), references=("x",)).scorer_name == "exact"
    with pytest.raises(ConfigError, match=r"`scorer` is set but no prompt has a reference"):
        ProbeSpec(prompts=("a",), scorer="exact")
    with pytest.raises(PromptError, match=r"`references` must have one entry per prompt, got 2 for 1 prompts"):
        ProbeSpec(prompts=("a",), references=("x", "y"))
    with pytest.raises(ConfigError, match=r"`scorer` must be one of"):
        ProbeSpec(prompts=("a",), references=("x",), scorer="bleu")


def test_measurement_from_figures():
    m = Measurement.from_figures(latency_ms=800, output_tokens=150, input_tokens=40, ttft_ms=50, quality=0.91)
    assert (m.latency_ms.p95, m.ttft_ms.p50, m.input_tokens.mean, m.quality) == (800.0, 50.0, 40.0, 0.91)
    base = Measurement.from_figures(latency_ms=200, output_tokens=150, input_tokens=40, ttft_ms=50, quality=0.87)
    assert base.incompatibilities(m) == []
    check = evaluate(Budget(max_latency_increase=0.5), m, base).checks[0]
    assert check.passed is False  # an identical slowdown on every request is certain, not noise
    with pytest.raises(ConfigError, match=r"`output_tokens` must be a finite number >= 0, got 1\.5"):
        Measurement.from_figures(latency_ms=200, output_tokens=1.5)  # type: ignore[arg-type]


@pytest.mark.slow
def test_real_model_is_scored_on_its_own_answers():
    """The embedded SmolLM2 answers "The capital of France is Paris." and misnames Italy's capital (seen here:
    quality 0.5 with ``contains`` over these two prompts)."""
    from ftcallback._embedded import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer()
    probe = [("What is the capital of France?", "Paris"), ("What is the capital of France? One word.", "paris")]
    m = measure(model, tok, probe, scorer="contains", apply_chat_template=True, max_new_tokens=12, **FAST_REAL)
    assert m.quality_scores[0] == 1.0 and "Paris" in m.sample_outputs[0]["output"]
    assert m.summary()["quality"] == m.quality


def test_pareto_point_from_a_report_check():
    from ftcallback._report import CheckRecord

    ok = CheckRecord(
        index=1,
        kind="epoch",
        step=20,
        summary={"quality": 0.9, "latency_ms_p50": 210.0},
        cost={"cost_per_request": 0.1},
    )
    point = ParetoPoint.from_record(ok, latency_metric="latency_ms_p50")
    assert point == ParetoPoint(step=20, quality=0.9, latency_ms=210.0, cost=0.1, within_budget=True)
    failed = CheckRecord(index=2, kind="epoch", step=30, status="failed", error="boom")
    assert ParetoPoint.from_record(failed) == ParetoPoint(30, None, None, None, False)
