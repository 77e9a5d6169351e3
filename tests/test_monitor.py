"""The run-level core without a Trainer: patience, stop decisions and reasons, ratios computed once, latency
comparability, checkpoints and the recommendation, failures. Hand-made measurements, milliseconds per test."""

from __future__ import annotations

import logging
import math

import pytest

from ftcallback import Budget, Measurement, RequestSample
from ftcallback._monitor import Monitor, StopReason, fmt_epoch
from ftcallback._probe import ProbeSpec

SPEC = ProbeSpec(prompts=("a", "b", "c", "d"), repeats=3)


def measurement(*, latency: float = 0.2, tokens: int = 10, batch_size: int = 1, spread: float = 0.01) -> Measurement:
    """Four prompts x three repeats; latency in seconds, jittered by +-spread."""
    samples = tuple(
        RequestSample(p, r, latency * (1 + spread * (r - 1)), latency / 10, 5, tokens, True)
        for p in range(4)
        for r in range(3)
    )
    settings = {**SPEC.settings(), "batch_size": batch_size}
    return Measurement(samples=samples, settings=settings)


def run(monitor: Monitor, *checks: Measurement) -> list:
    outcomes = [monitor.observe(measurement(), kind="baseline", epoch=0.0, step=0)]
    for i, m in enumerate(checks, start=1):
        outcomes.append(monitor.observe(m, kind="epoch", epoch=float(i), step=10 * i))
    return outcomes


def test_a_breach_stops_with_a_reason_and_one_warning(caplog):
    mon = Monitor(SPEC, Budget(max_token_increase=0.2))
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        *_, last = run(mon, measurement(tokens=11), measurement(tokens=15))
    assert last.decision.stop and last.decision.reason is StopReason.BUDGET_BREACHED
    assert last.decision.message == mon.report.stopped["message"]
    assert last.decision.message == (
        "stopping training at epoch 2 (step 20): output_tokens_mean 15.0 exceeds budget 12.0 (baseline 10.0, +50%)"
    )
    assert [r.getMessage() for r in caplog.records] == [last.decision.message]


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_patience_counts_consecutive_breaches_and_is_kept_once(patience):
    mon = Monitor(SPEC, Budget(max_token_increase=0.2), patience=patience)
    over, ok = measurement(tokens=20), measurement(tokens=10)
    outcomes = run(mon, over, ok, *[over] * patience)
    stops = [o.record.step for o in outcomes if o.decision.stop]
    # The lone breach before the good check stops only when patience is 1; after it, counting starts over.
    assert stops == ([10] if patience == 1 else []) + [10 * (2 + patience)]
    assert [o.record.consecutive_breaches for o in outcomes] == [0, 1, 0, *range(1, patience + 1)]
    assert mon.consecutive_breaches == patience  # derived from the record: one place


def test_a_failed_check_neither_counts_nor_resets():
    mon = Monitor(SPEC, Budget(max_token_increase=0.2), patience=2)
    run(mon, measurement(tokens=20))
    failed = mon.observe_failure("RuntimeError: boom", kind="epoch", epoch=2.0, step=20)
    assert failed.failed and not failed.decision.stop and failed.metrics() == {"efficiency/check_failed": 1.0}
    assert mon.consecutive_breaches == 1
    assert mon.observe(measurement(tokens=20), kind="epoch", epoch=3.0, step=30).decision.stop


def test_stop_training_false_records_but_never_stops():
    mon = Monitor(SPEC, Budget(max_token_increase=0.2), stop_training=False)
    *_, last = run(mon, measurement(tokens=20))
    assert last.record.breached and not last.decision.stop and mon.report.stopped is None


def test_the_baseline_never_breaches_but_says_so(caplog):
    mon = Monitor(SPEC, Budget(output_tokens=5))
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        (base,) = run(mon)
    assert not base.record.breached and not base.decision.stop
    assert caplog.records[0].getMessage().startswith(
        "the baseline already breaches the budget: output_tokens_mean 10.0"
    )


def test_the_reported_latency_ratio_is_the_one_that_decided(caplog):
    mon = Monitor(SPEC, Budget(max_latency_increase=0.2))
    with caplog.at_level(logging.INFO, logger="ftcallback"):
        *_, last = run(mon, measurement(latency=0.3))
    deciding = next(c for c in last.verdict.checks if c.budget == "max_latency_increase")
    ratios = last.record.ratios
    assert ratios["latency_judged_ratio"] == deciding.estimate.ratio == deciding.value
    assert (ratios["latency_judged_ratio_low"], ratios["latency_judged_ratio_high"]) == deciding.interval
    parts = last.verdict.decomposition
    assert (ratios["latency_ratio"], ratios["latency_length_ratio"], ratios["latency_speed_ratio"]) == (
        parts.total,
        parts.length,
        parts.speed,
    )
    assert ratios["latency_length_ratio"] == 1.0  # same answers: the whole change is per-token speed
    assert last.decision.stop
    # Why latency moved is said on the check's line, from that same decomposition.
    lines = [r.getMessage() for r in caplog.records]
    assert f"epoch 1 (step 10): {parts.describe()}" in lines
    # The headline shows the observed change beside the judged one (the baseline judges nothing), and trackers
    # and the console get the judged ratio under its own name.
    (baseline_line,) = [line for line in lines if line.startswith("baseline: latency p50")]
    assert ", latency x1.00, ttft" in baseline_line and "judged" not in baseline_line
    judged = deciding.value
    assert any(f", latency x{parts.total:.2f} (judged x{judged:.2f}), ttft" in line for line in lines), lines
    metrics = last.metrics()
    assert metrics["efficiency/latency_judged_ratio"] == judged and metrics["efficiency/latency_ratio"] == parts.total
    assert list(metrics)[3:6] == [
        "efficiency/latency_ratio",
        "efficiency/latency_judged_ratio",
        "efficiency/output_tokens_ratio",
    ]
    # The stop names that ratio, as the report and the TensorBoard limit line do.
    stop = f"stopping training at epoch 1 (step 10): latency_judged_ratio x{judged:.3f}"
    assert last.decision.message.startswith(stop)
    assert mon.budget.limits(mon.baseline) == {"latency_judged_ratio": 1.2}


def test_ratios_are_written_as_ratios_under_the_old_name_too():
    from ftcallback._format import metric_value

    # Reports written before the judged ratio had its own name call it latency_ratio: still read as a ratio.
    assert metric_value("latency_judged_ratio", 1.5) == metric_value("latency_ratio", 1.5) == "x1.500"


def test_a_retried_check_at_another_batch_size_never_compares_latency(caplog):
    mon = Monitor(SPEC, Budget(max_latency_increase=0.2, max_token_increase=0.2))
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        *_, last = run(mon, measurement(latency=0.6, tokens=11, batch_size=2))
    latency = next(c for c in last.verdict.checks if c.budget == "max_latency_increase")
    assert latency.passed is None and "batch_size is 1 in the baseline but 2 here" in latency.detail
    assert not any(k.startswith("latency_") for k in last.record.ratios)
    assert not last.decision.stop  # tokens still judged: +10% is within budget
    assert any("latency not compared with the baseline" in r.getMessage() for r in caplog.records)


def test_recommended_checkpoint_is_the_latest_within_budget_that_exists(tmp_path):
    mon = Monitor(SPEC, Budget(max_token_increase=0.2))
    run(mon, measurement(tokens=10))
    good = tmp_path / "checkpoint-10"
    good.mkdir()
    mon.record_checkpoint(10, good)
    mon.observe(measurement(tokens=20), kind="epoch", epoch=2.0, step=20)
    mon.record_checkpoint(20, tmp_path / "checkpoint-20")
    assert mon.recommended_checkpoint() == str(good)
    good.rmdir()  # rotated away and not kept: never name a path that is gone
    assert mon.recommended_checkpoint() is None
    kept = tmp_path / "kept" / "checkpoint-10"
    kept.mkdir(parents=True)
    mon.report.pinned_checkpoints = {str(good): str(kept)}
    assert mon.recommended_checkpoint() == str(kept)


def test_metrics_are_finite_numbers_under_one_prefix():
    mon = Monitor(SPEC, Budget(max_token_increase=0.2, input_price_per_1k=0.001, output_price_per_1k=0.002))
    *_, last = run(mon, measurement(tokens=11))
    metrics = last.metrics()
    assert all(k.startswith("efficiency/") and math.isfinite(v) for k, v in metrics.items())
    assert metrics["efficiency/breached"] == 0.0
    assert metrics["efficiency/output_tokens_ratio"] == pytest.approx(1.1)
    assert metrics["efficiency/cost_ratio"] == pytest.approx((5 * 0.001 + 11 * 0.002) / (5 * 0.001 + 10 * 0.002))


def test_a_named_monitor_prefixes_its_lines(caplog):
    mon = Monitor(SPEC, Budget(max_token_increase=0.2), name="short")
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        run(mon, measurement(tokens=20))
    assert caplog.records[-1].getMessage().startswith("[short] stopping training at epoch 1 (step 10)")


@pytest.mark.parametrize(("epoch", "text"), [(None, "?"), (2.0, "2"), (1.5, "1.50"), (2.0000001, "2")])
def test_fmt_epoch(epoch, text):
    assert fmt_epoch(epoch) == text


def test_probe_spec_validates_and_fingerprints():
    with pytest.raises(ValueError, match=r"`repeats` must be an integer >= 1, got 0"):
        ProbeSpec(prompts=("a",), repeats=0)
    a = ProbeSpec(prompts=("a",), generation_kwargs={"top_k": 5})
    assert a.fingerprint() == ProbeSpec(prompts=("a",), generation_kwargs={"top_k": 5}, repeats=9).fingerprint()
    assert a.fingerprint() != ProbeSpec(prompts=("b",), generation_kwargs={"top_k": 5}).fingerprint()
    assert ProbeSpec.from_dict(a.to_dict()) == a


def test_settings_with_an_object_match_their_own_saved_form():
    """A logits processor's repr holds a memory address; saved and live settings must still agree."""

    class Processor:
        pass

    spec = ProbeSpec(prompts=("a",), generation_kwargs={"logits_processor": [Processor()]})
    saved = Measurement.from_dict(Measurement(samples=(), settings=spec.settings()).to_dict())
    assert spec.incompatibilities(saved.settings) == []
