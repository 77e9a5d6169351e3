"""Decision truth on a busy machine: length vs speed, model vs machine, adaptive looks, serving budgets.

Everything here is Trainer-free and driven by synthetic measurements (exact numbers) or by the real
engine on a tiny model with injected clocks: relations and exact values, never durations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re

import numpy as np
import pytest
import torch

from ftcallback._budget import Budget, BudgetCheck, Verdict, evaluate
from ftcallback._decompose import LatencyDecomposition, decompose, level_uncertainty
from ftcallback._drift import (
    MachineFactor,
    ModelShapedReference,
    ReferenceWorkload,
    machine_factor,
    request_cpu,
    request_references,
)
from ftcallback._errors import ConfigError
from ftcallback._measure import measure, thread_cpu_clock
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._probe import ProbeSpec
from ftcallback._prober import ADAPTIVE_CAP, BASELINE_CAP, Prober
from ftcallback._sequential import (
    BASELINE_MIN,
    BASELINE_MIN_PASSES,
    BASELINE_PRECISION,
    baseline_needs_more,
    looks_of,
    needs_more,
    sequential_settings,
)
from ftcallback._stats import RatioEstimate, bonferroni_confidence, combine_log_intervals, independent_ratio
from ftcallback.testing import tiny_causal_lm

PROMPTS = 8
REPEATS = 3


def synthetic(
    *,
    tokens: int | list[int] = 10,
    ttft: float = 0.05,
    tpot: float = 0.01,
    slowdown: float = 1.0,
    machine: float = 1.0,
    contention: float = 1.0,
    sleep: float = 0.0,
    noise: float = 0.02,
    seed: int = 0,
    repeats: int = REPEATS,
    reference: bool = True,
) -> Measurement:
    """A measurement of 8 prompts whose computing takes exactly ``ttft + (n - 1) x tpot``, scaled.

    ``slowdown`` is the model's own per-token slowdown in computing, ``sleep`` a model that also sleeps
    that many times its computing time (a slowdown in waiting, not in CPU work), ``machine`` a slower
    device (the reference workload and the computing alike), ``contention`` a smaller share of the CPU
    (each call waits ready to run, around ``contention - 1`` times its computing, drawn per call);
    every timing gets a small multiplicative log-normal noise. The per-call CPU accounting says it all,
    as the engine records it: run time, run-queue wait, and the rest of the wall time slept.
    """
    rng = np.random.default_rng(seed)
    counts = tokens if isinstance(tokens, list) else [tokens] * PROMPTS
    calls = 1 + repeats * len(counts)  # one warm-up call, then one call per prompt and repeat (batch_size=1)
    # On a contended CPU each call gets its own share, around 1 / contention; on a quiet one every call runs
    # whenever it is ready (share 1).
    share = tuple(
        1.0 if contention == 1.0 else 1.0 / contention * float(np.exp(rng.normal(0.0, noise))) for _ in range(calls)
    )
    samples = []
    runs, waits = [0.05] * calls, [0.0] * calls
    for r in range(repeats):
        for p, n in enumerate(counts):
            call = 1 + r * len(counts) + p
            jitter = float(np.exp(rng.normal(0.0, noise)))
            work = slowdown * machine * jitter
            first = ttft * (1 + p / 10) * work
            ran = first + (n - 1) * tpot * work
            waited = ran * (1.0 / share[call] - 1.0)
            slept = ran / machine * sleep
            scale = (ran + waited + slept) / ran
            samples.append(RequestSample(p, r, ran + waited + slept, first * scale, 7, n, True))
            runs[call], waits[call] = ran, waited
    ref = tuple(0.002 * machine * float(np.exp(rng.normal(0.0, noise))) for _ in range(calls))
    settings = {"warmup": 1, "repeats": repeats, "batch_size": 1, "num_prompts": len(counts)}
    env = {"reference": "mlp256x16x1/cpu/cpu"}
    if not reference:
        return Measurement(samples=tuple(samples), settings=settings)
    return Measurement(
        samples=tuple(samples),
        settings=settings,
        reference_s=ref,
        cpu_share=share,
        cpu_run_s=tuple(runs),
        cpu_wait_s=tuple(waits),
        environment=env,
    )


def latency_check(verdict: Verdict) -> BudgetCheck:
    return next(c for c in verdict.checks if c.budget == "max_latency_increase")


# --------------------------------------------------------------------- decomposition
def test_pure_length_growth_is_all_length_and_exact():
    base, longer = synthetic(tokens=10), synthetic(tokens=16, seed=0)  # same noise draws, longer answers
    d = decompose(base, longer)
    assert d is not None
    # Per prompt: (ttft_p + 15 tpot) / (ttft_p + 9 tpot) at the baseline's own speed, geometric mean over prompts.
    expected = math.exp(
        np.mean([math.log((0.05 * (1 + p / 10) + 0.15) / (0.05 * (1 + p / 10) + 0.09)) for p in range(PROMPTS)])
    )
    assert d.length == pytest.approx(expected, rel=1e-9)
    assert d.speed == pytest.approx(1.0, rel=1e-9) and not d.speed_significant
    assert d.total == pytest.approx(d.length * d.speed, rel=1e-12)
    total, length = (d.total - 1) * 100, (d.length - 1) * 100
    assert d.describe().startswith(f"latency +{total:.0f}%: +{length:.0f}% from longer answers")


def test_per_token_slowdown_is_all_speed_with_an_interval():
    d = decompose(synthetic(), synthetic(slowdown=1.3, seed=1))
    assert d is not None
    assert d.length == 1.0 and d.speed == pytest.approx(1.3, rel=0.04)
    assert d.speed_low < d.speed < d.speed_high and d.speed_significant
    assert "+0% from longer answers (exact), +30% from per-token speed" in d.describe()
    assert "(significant)" in d.describe()


def test_length_and_speed_multiply_to_the_total():
    d = decompose(synthetic(tokens=10), synthetic(tokens=[12, 14, 10, 20, 9, 10, 11, 30], slowdown=1.1, seed=2))
    assert d is not None
    assert d.total == pytest.approx(d.length * d.speed, rel=1e-12)
    assert d.length > 1.0 and d.speed == pytest.approx(1.1, rel=0.03)


def test_decomposition_round_trips_and_describes_the_example():
    d = LatencyDecomposition(1.6, 1.57, 1.019, 0.98, 1.06, False, 0.95, 8)
    assert d.describe() == (
        "latency +60%: +57% from longer answers (exact), +2% from per-token speed [-2%, +6%] (not significant)"
    )
    assert LatencyDecomposition.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert decompose(Measurement(samples=()), synthetic()) is None


# --------------------------------------------------------------------- the latency decision rule
def test_length_growth_is_the_token_budgets_business_when_one_is_set():
    base, longer = synthetic(tokens=10), synthetic(tokens=16, seed=3)
    with_tokens = evaluate(Budget(max_latency_increase=0.2, max_token_increase=0.2), longer, base)
    assert not latency_check(with_tokens).breached  # per-token speed did not move
    assert [c.budget for c in with_tokens.breaches] == ["max_token_increase"]
    assert "length is the token budget's" in latency_check(with_tokens).detail
    # Without a token budget the latency budget covers length too, and says it was length.
    alone = latency_check(evaluate(Budget(max_latency_increase=0.2), longer, base))
    assert alone.breached and "from longer answers (exact)" in alone.describe()
    assert alone.decomposition is not None and alone.decomposition.length > 1.2


def test_a_per_token_slowdown_breaches_with_or_without_a_token_budget():
    base, slow = synthetic(), synthetic(slowdown=1.4, seed=4)
    for budget in (Budget(max_latency_increase=0.2), Budget(max_latency_increase=0.2, output_tokens=64)):
        check = latency_check(evaluate(budget, slow, base))
        assert check.breached and check.ratio == pytest.approx(1.4, rel=0.03)


# --------------------------------------------------------------------- machine drift
@pytest.mark.parametrize("kind", ["device", "contention"])
def test_a_slower_machine_is_divided_out_and_never_a_model_breach(kind):
    base = synthetic(seed=5)
    slower = synthetic(seed=6, **{"machine" if kind == "device" else "contention": 1.4})
    verdict = evaluate(Budget(max_latency_increase=0.2), slower, base)
    check = latency_check(verdict)
    assert verdict.environment_changed and verdict.machine is not None
    assert verdict.machine.estimate.ratio == pytest.approx(1.4, rel=0.03)
    part = verdict.machine.device if kind == "device" else verdict.machine.contention
    assert part is not None and part.ratio == pytest.approx(1.4, rel=0.03)
    assert not check.breached and check.ratio == pytest.approx(1.0, abs=0.04)
    assert check.decomposition is not None and check.decomposition.total == pytest.approx(1.4, rel=0.03)
    assert "environment change, not a model breach" in check.detail
    assert re.search(r"from the machine x1\.(39|4)", check.describe()), check.describe()
    # Without the drift control (no reference timings) the same data would have stopped the run.
    raw = latency_check(evaluate(Budget(max_latency_increase=0.2), strip(slower), strip(base)))
    assert raw.breached


def strip(m: Measurement) -> Measurement:
    return Measurement(samples=m.samples)


def test_a_slower_model_on_a_steady_machine_breaches():
    verdict = evaluate(Budget(max_latency_increase=0.2), synthetic(slowdown=1.4, seed=7), synthetic(seed=8))
    assert verdict.machine is not None and not verdict.machine.moved and not verdict.environment_changed
    check = latency_check(verdict)
    assert check.breached and check.ratio == pytest.approx(1.4, rel=0.03)


def test_a_slower_model_on_a_contended_cpu_breaches_as_on_a_quiet_one():
    base = synthetic(seed=9)
    contended = synthetic(slowdown=1.5, contention=1.4, seed=10)
    both = evaluate(Budget(max_latency_increase=0.2), contended, base)
    model_only = evaluate(Budget(max_latency_increase=0.2), synthetic(slowdown=1.5, seed=10), base)
    a, b = latency_check(both), latency_check(model_only)
    assert a.breached and a.ratio == pytest.approx(1.5, rel=0.04)
    assert a.interval is not None and b.interval is not None
    # Contention divided out request by request leaves no uncertainty of its own: the interval is about as
    # narrow as on a quiet CPU, and narrower than dividing by a measurement-level factor beside it.
    width = a.interval[1] - a.interval[0]
    assert width < 1.5 * (b.interval[1] - b.interval[0])
    unmatched = dataclasses.replace(contended, settings={})  # calls that cannot be matched to requests
    c = latency_check(evaluate(Budget(max_latency_increase=0.2), unmatched, base))
    assert c.ratio == pytest.approx(1.5, rel=0.06) and c.interval is not None
    assert c.interval[1] - c.interval[0] > width
    assert both.machine is not None and both.machine.contention is not None
    assert both.machine.contention.ratio == pytest.approx(1.4, rel=0.04)


def test_a_model_that_sleeps_is_judged_slower_by_the_full_amount_on_a_busy_machine():
    # +40% from sleeping inside forward (I/O, a device wait), on a CPU with contention and a slower device:
    # only the run-queue wait is contention, and only the computing is divided by the device.
    base = synthetic(seed=19)
    sleepy = synthetic(sleep=0.4, contention=1.8, machine=1.3, seed=20)
    check = latency_check(evaluate(Budget(max_latency_increase=0.2), sleepy, base))
    assert check.breached and check.ratio == pytest.approx(1.4, rel=0.04)


def test_a_wait_is_weighed_against_the_computing_of_the_machine_at_its_faster_state():
    # The baseline met a slow moment of the machine (its device 1.3x slower); at the check it is back to its
    # usual speed and the model sleeps 40% of its computing time more. In the baseline's frame the same sleep
    # would weigh 0.4 / 1.3 (x1.31, under a 1.35 limit); at the faster state it weighs what it weighs there.
    base = synthetic(machine=1.3, seed=21)
    sleepy = synthetic(sleep=0.4, seed=22)
    budget = Budget(max_latency_increase=0.35)
    check = latency_check(evaluate(budget, sleepy, base))
    assert check.breached and check.ratio == pytest.approx(1.4, rel=0.03)
    # The frame changes nothing for a model that only computes, nor for one that always slept as much.
    assert latency_check(evaluate(budget, synthetic(seed=23), base)).ratio == pytest.approx(1.0, abs=0.03)
    always = latency_check(evaluate(budget, synthetic(sleep=0.3, seed=24), synthetic(sleep=0.3, machine=1.3, seed=25)))
    assert not always.breached and always.ratio == pytest.approx(1.0, abs=0.03)
    # Nor when the check is the slower side: the baseline's state is the faster one.
    slow_check = latency_check(evaluate(budget, synthetic(sleep=0.4, machine=1.3, seed=26), synthetic(seed=27)))
    assert slow_check.ratio == pytest.approx(1.4, rel=0.03)


@pytest.mark.parametrize("path", ["matched", "device matched only", "not matched"])
def test_length_speed_and_machine_multiply_to_the_total_on_every_path(path):
    base = synthetic(tokens=10, seed=25)
    check = synthetic(tokens=[12, 10, 14, 10, 11, 10, 10, 16], slowdown=1.2, contention=1.5, machine=1.1, seed=26)
    if path == "device matched only":  # no per-call run/wait seconds: contention divided out as a whole
        base, check = (dataclasses.replace(m, cpu_run_s=(), cpu_wait_s=()) for m in (base, check))
    elif path == "not matched":
        base, check = (dataclasses.replace(m, settings={}) for m in (base, check))
    verdict = evaluate(Budget(max_latency_increase=0.2, max_token_increase=1.0), check, base)
    d = verdict.decomposition
    assert d is not None and d.machine is not None and verdict.machine == d.machine
    assert d.total == pytest.approx(d.length * d.speed * d.machine.factor, rel=1e-9)
    assert d.speed == pytest.approx(1.2, rel=0.05) and d.machine.factor == pytest.approx(1.65, rel=0.06)


def test_requests_are_matched_to_the_calls_that_timed_them():
    m = synthetic(repeats=2, contention=2.0)
    cpu = request_cpu(m)
    assert cpu is not None and len(cpu) == 2 * PROMPTS
    s = next(x for x in m.samples if (x.prompt_index, x.repeat) == (3, 1))
    call = 1 + 1 * PROMPTS + 3  # warm-up first, then repeat 1, prompt 3
    assert cpu[(3, 1)] == pytest.approx((m.cpu_run_s[call] / s.latency_s, m.cpu_wait_s[call] / s.latency_s))
    batched = dataclasses.replace(
        m, settings={**m.settings, "batch_size": 4}, cpu_run_s=(0.1, 0.2, 0.2, 0.2, 0.2), cpu_wait_s=(0, 0, 0.1, 0, 0)
    )
    by_call = request_cpu(batched)
    assert by_call is not None and {k for k, v in by_call.items() if v[1] > 0} == {(p, 0) for p in range(4, 8)}
    assert request_cpu(dataclasses.replace(m, cpu_wait_s=m.cpu_wait_s[:-1])) is None  # counts do not add up
    assert request_cpu(dataclasses.replace(m, settings={})) is None
    refs = request_references(m)
    # Its local device speed: the median of the 5 reference timings nearest its call (1): calls 0 to 4.
    assert refs is not None and refs[(0, 0)] == pytest.approx(float(np.median(m.reference_s[0:5])))
    # A call the reference was not run before (NaN) reads the nearest timings that exist.
    every_third = tuple(v if k % 3 == 0 else math.nan for k, v in enumerate(m.reference_s))
    sparse = dataclasses.replace(m, reference_s=every_third)
    near = request_references(sparse)
    timed = [(k, v) for k, v in enumerate(sparse.reference_s) if k % 3 == 0]
    expected = float(np.median([v for _, v in sorted(timed, key=lambda kv: abs(kv[0] - 1))[:5]]))
    assert near is not None and set(near) == set(refs) and near[(0, 0)] == pytest.approx(expected)


def test_machine_factor_needs_timings_on_both_sides_and_the_same_workload():
    assert machine_factor(strip(synthetic()), synthetic()) is None
    other = synthetic()
    other = Measurement(samples=other.samples, reference_s=other.reference_s, environment={"reference": "x"})
    assert machine_factor(synthetic(), other) is None
    factor = machine_factor(synthetic(), synthetic(seed=1))
    assert factor is not None and not factor.moved and factor.factor == pytest.approx(1.0, abs=0.03)
    assert MachineFactor.from_dict(json.loads(json.dumps(factor.to_dict()))) == factor
    assert "within its noise" in factor.describe()


def test_independent_ratio_and_combined_intervals():
    est = independent_ratio([1.0] * 9 + [50.0], [2.0] * 10)  # one freak timing is trimmed away
    assert est.ratio == 2.0 and est.low <= 2.0 <= est.high
    a = RatioEstimate(2.0, 1.6, 2.5, 8, 0.95)
    b = RatioEstimate(1.25, 1.25, 1.25, 8, 0.95)  # exact
    c = combine_log_intervals(a, b, divide=True)
    assert (c.ratio, c.low, c.high) == pytest.approx((1.6, 1.28, 2.0))
    wide = combine_log_intervals(a, RatioEstimate(1.0, 0.8, 1.25, 8, 0.95), divide=False)
    assert wide.low < a.low and wide.high > a.high


def test_reference_workload_is_deterministic_and_leaves_rngs_alone():
    before = torch.get_rng_state()
    a, b = ReferenceWorkload("cpu", width=8, depth=2, rows=3), ReferenceWorkload("cpu", width=8, depth=2, rows=3)
    assert torch.equal(a.run(), b.run()) and a.spec == "mlp8x2x3/cpu"
    assert torch.equal(torch.get_rng_state(), before)
    ticks = iter([1.0, 3.5])
    assert a.seconds(lambda: next(ticks)) == 2.5
    with pytest.raises(ConfigError, match="`width` must be an int >= 1, got 0"):
        ReferenceWorkload("cpu", width=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_reference_on_a_cpu_is_a_one_layer_copy_of_the_models_architecture(arch):
    model = tiny_causal_lm(arch, layers=3, vocab_size=5000)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    before = torch.get_rng_state()
    a, b = ModelShapedReference.for_model(model, "cpu"), ModelShapedReference.for_model(model, "cpu")
    assert isinstance(a, ModelShapedReference) and a.spec == b.spec == f"{arch}x1/v1024/float32/gen4/cpu"
    # Its own weights from a private seed: the same arithmetic in every process, whatever the model has learned.
    assert torch.equal(a.run(), b.run()) and a.run().shape == (1, 8 + 4)
    assert torch.equal(torch.get_rng_state(), before)
    copy = a._model
    assert copy is not model and copy.config.num_hidden_layers == 1 and copy.config.vocab_size == 1024
    assert not any(p.requires_grad for p in copy.parameters()) and not copy.training
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # the model is untouched
    assert not any(p.data_ptr() == q.data_ptr() for p in copy.parameters() for q in model.parameters())
    ticks = iter([1.0, 3.5])
    assert a.seconds(lambda: next(ticks)) == 2.5


def test_the_reference_falls_back_to_the_mlp_where_no_copy_can_be_made(monkeypatch):
    plain = ModelShapedReference.for_model(torch.nn.Linear(4, 4), "cpu")  # no transformers config
    assert type(plain) is ReferenceWorkload and plain.spec == "mlp256x16x1/cpu"
    with monkeypatch.context() as patch:  # a copy that would not be small next to its model is not built
        patch.setattr(ModelShapedReference, "SMALL", 0)
        patch.setattr(ModelShapedReference, "MAX_SHARE", 0.1)
        assert type(ModelShapedReference.for_model(tiny_causal_lm("gpt2", layers=3), "cpu")) is ReferenceWorkload
    with pytest.raises(ConfigError, match="`tokens` must be an int >= 2, got 1"):
        ModelShapedReference(tiny_causal_lm("gpt2"), "cpu", tokens=1)
    # On an accelerator the MLP stays (the copy was measured on CPUs only); no accelerator is needed to ask.
    assert type(ModelShapedReference.for_model(tiny_causal_lm("gpt2"), "meta")) is ReferenceWorkload


def test_the_prober_times_a_one_layer_copy_of_the_model(gpt2, tokenizer, prompts):
    spec = ProbeSpec(prompts=tuple(prompts[:2]), max_new_tokens=2, warmup=0, repeats=1)
    prober = Prober(spec, Budget(output_tokens=10**6))
    prober.tokenizer = tokenizer
    m, _ = prober.measure(gpt2, baseline=None, mode=None, beat=lambda: None)
    # Sharded runs keep the MLP (tests/test_deepspeed.py runs them): every rank must be able to build it.
    assert m.environment["reference"] == "gpt2x1/v1000/float32/gen4/cpu/cpu"
    # A baseline timed with the MLP (a report written before the copy, resumed) is checked with the MLP.
    old = dataclasses.replace(m, environment={**m.environment, "reference": "mlp256x16x1/cpu/cpu"})
    resumed = Prober(spec, Budget(output_tokens=10**6))
    resumed.tokenizer = tokenizer
    check, _ = resumed.measure(gpt2, baseline=old, mode=None, beat=lambda: None)
    assert check.environment["reference"] == "mlp256x16x1/cpu/cpu"


class Manual:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class CostlyReference(ReferenceWorkload):
    """A reference workload that takes ``cost`` seconds of a manual clock."""

    def __init__(self, clock: Manual, cost: float) -> None:
        super().__init__("cpu", width=4, depth=1, rows=1)
        self.clock, self.cost = clock, cost

    def run(self) -> None:
        self.clock.t += self.cost


@pytest.mark.parametrize("cost", [0.001, 0.05, 0.2])
def test_the_reference_is_timed_only_while_it_costs_at_most_half_the_calls(gpt2, tokenizer, prompts, cost):
    clock = Manual()
    handle = gpt2.register_forward_hook(lambda *_: setattr(clock, "t", clock.t + 0.01))  # each forward: 10 ms
    try:
        m = measure(
            gpt2, tokenizer, prompts, max_new_tokens=4, warmup=1, repeats=4, batch_size=2,
            clock=clock, cpu_clock=lambda: (clock(), 0.0), reference=CostlyReference(clock, cost),
        )
    finally:
        handle.remove()
    calls = 1 + 4 * -(-len(prompts) // 2)
    timed = [v for v in m.reference_s if math.isfinite(v)]
    # Before the first calls whatever it costs, then only while it is cheap enough.
    assert len(m.reference_s) == calls and m.reference_s[:3] == pytest.approx((cost,) * 3)
    generating = 0.04 * calls  # four forward passes per call
    if cost == 0.001:  # a fortieth of a call: before every one
        assert len(timed) == calls
    else:
        assert 3 <= len(timed) < calls
        # Timed only while it had cost at most half the calls so far: at most one timing over.
        assert sum(timed) <= max(3 * cost, 0.5 * generating + cost)
    # Every request still reads a local speed, from the nearest timings.
    refs = request_references(m)
    assert refs is not None and set(refs) == {(s.prompt_index, s.repeat) for s in m.samples}
    assert list(refs.values()) == pytest.approx([cost] * len(refs))


# --------------------------------------------------------------------- one ratio, computed once
def test_one_ratio_with_the_callers_seed_and_the_budgets_confidence():
    base, slow = synthetic(seed=11), synthetic(slowdown=1.3, seed=12)
    budget = Budget(max_latency_increase=0.2, confidence=0.9)
    verdict = evaluate(budget, slow, base, seed=3)
    check = latency_check(verdict)
    assert check.estimate is not None and check.estimate.confidence == 0.9
    assert verdict.decomposition is check.decomposition  # the very object, logged and judged
    assert evaluate(budget, slow, base, seed=3) == verdict
    # The verdict's JSON carries the decomposition and the machine factor.
    again = Verdict.from_dict(json.loads(json.dumps(verdict.to_dict())))
    assert again.decomposition == verdict.decomposition and again.machine == verdict.machine


# --------------------------------------------------------------------- adaptive measurement
def test_needs_more_only_when_the_interval_straddles_the_limit():
    budget = Budget(max_latency_increase=0.2)
    base = synthetic(seed=13)
    assert not needs_more(budget, synthetic(seed=14), base)  # clearly within
    assert not needs_more(budget, synthetic(slowdown=1.6, seed=14), base)  # clearly over
    assert needs_more(budget, synthetic(slowdown=1.2, seed=14, noise=0.08), base)  # at the limit, noisy
    assert not needs_more(budget, synthetic(), None) and not needs_more(Budget(), synthetic(), base)


def test_more_repeats_narrow_the_interval_near_the_limit():
    budget = Budget(max_latency_increase=0.2)
    base = synthetic(seed=15, noise=0.08, repeats=9)
    three = synthetic(slowdown=1.3, seed=16, noise=0.08, repeats=3)
    nine = synthetic(slowdown=1.3, seed=16, noise=0.08, repeats=9)
    narrow = latency_check(evaluate(budget, nine, base)).interval
    wide = latency_check(evaluate(budget, three, base)).interval
    assert narrow is not None and wide is not None
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_the_sequential_plan_sets_a_bonferroni_confidence():
    plan = sequential_settings(3, 9)
    assert plan == {"step": 3, "max_repeats": 9, "looks": 3} and sequential_settings(3, 8)["looks"] == 3
    m = synthetic(slowdown=1.3, seed=17)
    adaptive = Measurement(samples=m.samples, settings={"sequential": plan})
    assert looks_of(adaptive) == 3 and looks_of(m) == 1
    check = latency_check(evaluate(Budget(max_latency_increase=0.2), adaptive, strip(synthetic(seed=18))))
    assert check.estimate is not None and check.estimate.confidence == pytest.approx(bonferroni_confidence(0.95, 3))
    assert "98.3% interval" in check.detail


def test_the_baseline_level_is_known_better_with_more_repeats_and_less_jitter():
    def se(**kwargs: float) -> float:
        return float(np.mean([level_uncertainty(synthetic(seed=seed, **kwargs)) for seed in range(4)]))

    assert se(repeats=12) < se(repeats=3) / 1.5  # about 1 / sqrt(4)
    assert se(noise=0.005) < se(noise=0.02) < se(noise=0.05)
    # A prompt with a single timing has no spread to read: never "precise".
    assert level_uncertainty(synthetic(repeats=1)) == math.inf
    # Without per-call machine timings (off Linux, no reference) the raw timings are read.
    assert 0 < level_uncertainty(synthetic(reference=False)) < math.inf


def test_the_baseline_needs_more_until_it_is_long_enough_and_precise_enough():
    steady = synthetic(repeats=2 * REPEATS, noise=0.002)
    assert not baseline_needs_more(steady, step=REPEATS)
    # Too short, however steady: a median of three timings can look precise by luck.
    assert baseline_needs_more(synthetic(repeats=BASELINE_MIN * REPEATS - 1, noise=0.002), step=REPEATS)
    # A small step still needs the absolute floor of passes.
    assert baseline_needs_more(synthetic(repeats=BASELINE_MIN_PASSES - 1, noise=0.002), step=1)
    assert not baseline_needs_more(synthetic(repeats=BASELINE_MIN_PASSES, noise=0.002), step=1)
    jittery = synthetic(repeats=2 * REPEATS, noise=0.08)
    assert level_uncertainty(jittery) > BASELINE_PRECISION and baseline_needs_more(jittery, step=REPEATS)


def test_the_prober_measures_an_unsharded_baseline_to_a_precision_within_its_bounds(
    gpt2, tokenizer, prompts, caplog
):
    spec = ProbeSpec(prompts=tuple(prompts), max_new_tokens=3, repeats=2)
    relative = Prober(spec, Budget(max_latency_increase=0.2))
    relative.tokenizer = tokenizer
    with caplog.at_level(logging.INFO, logger="ftcallback"):
        m, _ = relative.measure(gpt2, baseline=None, mode=None, beat=lambda: None, is_baseline=True)
    done = m.settings["repeats"]
    # Its plan is recorded as a precision, not as looks: judged later as a measurement, it gets no Bonferroni.
    precision = m.settings["precision"]
    achieved = precision.pop("achieved")
    assert precision == {**sequential_settings(2, BASELINE_CAP * 2), "standard_error": BASELINE_PRECISION}
    assert "sequential" not in m.settings and looks_of(m) == 1
    assert max(BASELINE_MIN * 2, BASELINE_MIN_PASSES) <= done <= BASELINE_CAP * 2 and done % 2 == 0
    # Stopped at the first look where it was precise enough, or at the cap; the precision it reached is recorded,
    # and reaching the cap short of it is said once.
    assert achieved == pytest.approx(level_uncertainty(m, seed=spec.seed))
    assert done == BASELINE_CAP * 2 or not baseline_needs_more(m, step=2)
    short = [r.getMessage() for r in caplog.records if "cap of" in r.getMessage()]
    if achieved > BASELINE_PRECISION:
        assert done == BASELINE_CAP * 2 and short == [
            f"baseline: the cap of {done} passes reached with a standard error of its latency level of "
            f"{100 * achieved:.2f}% (target 0.75%): the machine or the model's calls are noisy; every check's "
            "latency interval carries it, so a latency change near the limit is called later (raise repeats for a "
            "longer cap)"
        ]
    else:
        assert short == []
    # Without a relative latency budget nothing is judged against the baseline's timing: `repeats` it is.
    plain = Prober(spec, Budget(max_token_increase=0.2))
    plain.tokenizer = tokenizer
    m, _ = plain.measure(gpt2, baseline=None, mode=None, beat=lambda: None, is_baseline=True)
    assert m.settings["repeats"] == 2 and "sequential" not in m.settings
    assert ADAPTIVE_CAP < BASELINE_CAP


class Ticks:
    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.parametrize(("answer", "repeats_done", "looks"), [(True, 2, [2]), (False, 6, [2, 4])])
def test_measure_stops_early_when_clear_and_extends_when_not(gpt2, tokenizer, prompts, answer, repeats_done, looks):
    asked = []

    def until(m: Measurement) -> bool:
        asked.append(m.settings["repeats"])
        return answer

    clock, run, wait = Ticks(1.0), Ticks(0.5), Ticks(1.5)

    def cpu() -> tuple[float, float]:  # every read: the thread ran 0.5 s more and waited 1.5 s more
        return run(), wait()

    ref = ReferenceWorkload("cpu", width=8, depth=1, rows=2)
    m = measure(
        gpt2, tokenizer, prompts, max_new_tokens=3, warmup=1, repeats=2, batch_size=2,
        until=until, max_repeats=6, clock=clock, cpu_clock=cpu, reference=ref,
    )
    assert asked == looks  # no look once the cap is reached
    assert m.settings["repeats"] == repeats_done and m.settings["sequential"] == sequential_settings(2, 6)
    assert len(m.samples) == len(prompts) * repeats_done
    assert sorted({s.repeat for s in m.samples}) == list(range(repeats_done))
    calls = 1 + repeats_done * 2  # warm-up + two batches per pass
    # The reference ran before every call, timed by the CPU clock on a CPU: exactly one tick.
    assert m.reference_s == (0.5,) * calls and m.environment["reference"] == "mlp8x1x2/cpu/cpu"
    assert m.cpu_share == (0.25,) * calls  # ran 0.5 of the 2.0 s it was ready to run
    again = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.reference_s == m.reference_s and again.cpu_share == m.cpu_share
    assert again.samples == m.samples
    # Every request is matched to the call that timed it, for the call-by-call division.
    keys = {(s.prompt_index, s.repeat) for s in m.samples}
    cpu, refs = request_cpu(again), request_references(again)
    assert again.cpu_run_s == (0.5,) * calls and again.cpu_wait_s == (1.5,) * calls
    assert cpu is not None and set(cpu) == keys
    assert refs is not None and set(refs) == keys and set(refs.values()) == {0.5}


def test_a_call_the_cpu_clock_saw_no_run_time_of_keeps_its_place(gpt2, tokenizer, prompts):
    frozen = Ticks(0.0)  # run time never advances: no share can be computed for any call

    def cpu() -> tuple[float, float]:
        return 0.0, frozen()

    m = measure(gpt2, tokenizer, prompts, max_new_tokens=2, warmup=1, repeats=1, batch_size=2, cpu_clock=cpu)
    assert len(m.cpu_share) == 1 + 2 and all(math.isnan(v) for v in m.cpu_share)  # one entry per call
    assert request_cpu(m) == {}  # matched, but no call ran: nothing is divided out call by call
    back = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert len(back.cpu_share) == 3 and all(math.isnan(v) for v in back.cpu_share)


def test_measure_rejects_bad_adaptive_arguments(gpt2, tokenizer, prompts):
    with pytest.raises(ConfigError, match=r"`max_repeats` must be >= `repeats` \(3\), got 2"):
        measure(gpt2, tokenizer, prompts, repeats=3, max_repeats=2, until=lambda m: True)
    with pytest.raises(ConfigError, match="`until` must be callable"):
        measure(gpt2, tokenizer, prompts, until=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`reference` must be a ReferenceWorkload or None"):
        measure(gpt2, tokenizer, prompts, reference="mlp")  # type: ignore[arg-type]


def test_thread_cpu_clock_reads_run_and_wait_time():
    read = thread_cpu_clock()
    if read is None:
        pytest.skip("no /proc/thread-self/schedstat here")
    (ran0, waited0), _, (ran1, waited1) = read(), sum(range(200_000)), read()
    assert ran1 > ran0 and waited1 >= waited0


def test_files_written_before_these_fields_still_load():
    data = synthetic().to_dict()
    for key in ("reference_s", "cpu_share", "cpu_run_s", "cpu_wait_s"):
        data.pop(key)
    data["samples"].pop("token_times_s", None)
    old = Measurement.from_dict(data)
    assert old.reference_s == () and old.cpu_share == () and all(s.token_times_s == () for s in old.samples)
    assert old.cpu_run_s == () and old.cpu_wait_s == ()
    assert "itl_ms_p50" not in old.summary()
    # A file with per-call shares but no run/wait seconds (written by 0.2's first cut) is judged with the
    # measurement-level machine factor: the same verdict, a wider interval.
    base, contended = synthetic(seed=21), synthetic(slowdown=1.5, contention=1.6, seed=22)
    halfway = [dataclasses.replace(m, cpu_run_s=(), cpu_wait_s=()) for m in (base, contended)]
    paired = latency_check(evaluate(Budget(max_latency_increase=0.2), contended, base))
    whole = latency_check(evaluate(Budget(max_latency_increase=0.2), halfway[1], halfway[0]))
    assert paired.breached and whole.breached and whole.ratio == pytest.approx(paired.ratio, rel=0.08)
    assert paired.interval is not None and whole.interval is not None
    assert whole.interval[1] - whole.interval[0] > paired.interval[1] - paired.interval[0]


# --------------------------------------------------------------------- serving budgets
def timed(latencies_ttft_n: list[tuple[float, float, int]], *, finished: bool = True) -> Measurement:
    return Measurement(
        samples=tuple(
            RequestSample(i, 0, lat, ttft, 5, n, finished if i else False,
                          tuple(ttft + k * (lat - ttft) / max(1, n - 1) for k in range(n)))
            for i, (lat, ttft, n) in enumerate(latencies_ttft_n)
        )
    )


def test_itl_from_token_times():
    m = timed([(0.5, 0.1, 5), (0.9, 0.1, 3)])
    assert m.samples[0].inter_token_s == pytest.approx((0.1, 0.1, 0.1, 0.1))
    s = m.summary()
    assert s["itl_ms_max"] == pytest.approx(400.0) and s["itl_ms_p50"] == pytest.approx(100.0)
    assert {"itl_ms_mean", "itl_ms_p99"} <= set(s)


def test_ttft_tpot_slo_and_truncation_budgets():
    # TTFT 100/100/300 ms, TPOT 100/400/50 ms, latency 500/900/400 ms; request 0 was cut at max_new_tokens.
    m = timed([(0.5, 0.1, 5), (0.9, 0.1, 3), (0.4, 0.3, 3)])
    budget = Budget(
        latency_ms=800, ttft_ms=200, tpot_ms=150, latency_stat="p50", min_slo_attainment=0.5,
        max_truncated_fraction=0.25,
    )
    verdict = evaluate(budget, m)
    by = {c.budget: c for c in verdict.checks}
    assert [c.budget for c in verdict.checks] == [
        "latency_ms", "ttft_ms", "tpot_ms", "min_slo_attainment", "max_truncated_fraction"
    ]
    assert by["ttft_ms"].metric == "ttft_ms_p50" and by["ttft_ms"].value == pytest.approx(100.0)
    assert by["tpot_ms"].value == pytest.approx(100.0) and by["tpot_ms"].passed
    # Only request 0 meets every limit: 1 of 3.
    assert by["min_slo_attainment"].value == pytest.approx(1 / 3) and by["min_slo_attainment"].breached
    assert by["min_slo_attainment"].describe() == "slo_attainment 0.333 below minimum 0.500"
    assert by["min_slo_attainment"].margin < 0
    assert by["max_truncated_fraction"].breached
    assert by["max_truncated_fraction"].describe() == "truncated_fraction 0.333 exceeds budget 0.250"
    assert budget.limits() == {
        "latency_ms_p50": 800.0, "ttft_ms_p50": 200.0, "tpot_ms_p50": 150.0, "slo_attainment": 0.5,
        "truncated_fraction": 0.25,
    }
    assert Budget.from_dict(budget.to_dict()) == budget
    assert "ttft_ms=200.0" in repr(budget)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttft_ms": 0}, r"`ttft_ms` must be > 0, got 0.0 \(an SLA on time to first token"),
        ({"tpot_ms": -1}, r"`tpot_ms` must be > 0, got -1.0"),
        ({"ttft_ms": 100, "min_slo_attainment": 0}, r"`min_slo_attainment` must be in \(0, 1\], got 0.0"),
        ({"ttft_ms": 100, "min_slo_attainment": 1.5}, r"`min_slo_attainment` must be in \(0, 1\], got 1.5"),
        ({"min_slo_attainment": 0.9}, r"`min_slo_attainment` needs a per-request limit to attain"),
        ({"max_truncated_fraction": 1.0}, r"`max_truncated_fraction` must be in \[0, 1\), got 1.0"),
        ({"max_truncated_fraction": "a"}, r"`max_truncated_fraction` must be a number, got 'a'"),
    ],
)
def test_serving_budget_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Budget(**kwargs)


# --------------------------------------------------------------------- the noise warning on a busy CPU
def test_noise_from_waiting_for_the_cpu_is_told_apart_from_noisy_computing():
    from ftcallback._errors import NoisyMeasurementWarning
    from ftcallback._measure import _log_result, machine_free_noise_cv

    # The same computing every repeat (2% noise), but repeat r's calls waited for the CPU 0.2x, 1x, 2x as long
    # as they computed: the same request's latency varies by ~40%, what the comparison sees by ~2%.
    quiet = synthetic(noise=0.02, seed=23)
    waits, samples = list(quiet.cpu_wait_s), []
    for s in quiet.samples:
        waited = s.latency_s * (0.2, 1.0, 2.0)[s.repeat]
        waits[1 + s.repeat * PROMPTS + s.prompt_index] = waited
        samples.append(dataclasses.replace(s, latency_s=s.latency_s + waited))
    contended = dataclasses.replace(quiet, samples=tuple(samples), cpu_wait_s=tuple(waits))
    assert contended.noise_cv > 0.4
    assert machine_free_noise_cv(contended, device=False) == pytest.approx(quiet.noise_cv, rel=1e-9)
    # Warned (absolute limits see that wait), saying it was the CPU and which checks take it out.
    with pytest.warns(NoisyMeasurementWarning, match="without the time it waited for the CPU: other processes") as w:
        _log_result(contended)
    assert "Relative latency checks take that wait out" in str(w[0].message)
    assert "increase repeats" not in str(w[0].message)  # more repeats would not help
    # Noise in the computing itself, on a quiet CPU: warned, and waiting is not mentioned.
    noisy = synthetic(noise=0.35, seed=24)
    assert machine_free_noise_cv(noisy, device=False) == pytest.approx(noisy.noise_cv)
    with pytest.warns(NoisyMeasurementWarning, match=r"varied by \d+% \(median CV of latency across repeats, "):
        _log_result(noisy)


def test_noise_from_the_machines_speed_is_told_apart_and_adaptive_passes_are_not_called_repeats():
    from ftcallback._errors import NoisyMeasurementWarning
    from ftcallback._measure import _log_result, machine_free_noise_cv

    # The machine ran repeat r 0.8x, 1x, 1.3x as fast as usual, no process waiting for the CPU (a host's
    # neighbours, a clock that moves): the model's computing and the reference beside each call alike.
    quiet = synthetic(noise=0.02, seed=28)
    speed = (0.8, 1.0, 1.3)
    samples, runs, refs = [], list(quiet.cpu_run_s), list(quiet.reference_s)
    for s in quiet.samples:
        call = 1 + s.repeat * PROMPTS + s.prompt_index
        runs[call] *= speed[s.repeat]
        refs[call] *= speed[s.repeat]
        samples.append(dataclasses.replace(s, latency_s=s.latency_s * speed[s.repeat]))
    drifting = dataclasses.replace(quiet, samples=tuple(samples), cpu_run_s=tuple(runs), reference_s=tuple(refs))
    assert drifting.noise_cv > 0.2 and machine_free_noise_cv(drifting, device=False) > 0.2  # no wait to take out
    # Taken out call by call against the local reference (five nearest timings: a window straddling a change
    # of speed mixes two), so near the quiet measurement's noise, far under the threshold.
    assert machine_free_noise_cv(drifting) < 2 * quiet.noise_cv + 0.01 < 0.1
    with pytest.warns(NoisyMeasurementWarning, match="with the machine taken out .*: the machine's speed varied") as w:
        _log_result(drifting)
    assert "increase repeats" not in str(w[0].message)
    # Noise the machine does not explain, in a measurement whose passes an adaptive rule chose: the count is
    # the rule's, and the advice says what raising `repeats` does.
    noisy = synthetic(noise=0.35, seed=29, repeats=6)
    noisy = dataclasses.replace(noisy, settings={**noisy.settings, "sequential": sequential_settings(3, 9)})
    with pytest.warns(NoisyMeasurementWarning, match=r"over 6 passes \(repeats=3, measured adaptively up to 9\)"):
        _log_result(noisy)


def test_a_baseline_short_of_its_precision_at_the_cap_is_said_once(caplog):
    from ftcallback._prober import _say_precision

    def baseline(passes: int, achieved: float | None) -> Measurement:
        plan = {**sequential_settings(3, 27), "standard_error": BASELINE_PRECISION, "achieved": achieved}
        return Measurement(samples=synthetic().samples, settings={"repeats": passes, "precision": plan})

    with caplog.at_level(logging.INFO, logger="ftcallback"):
        _say_precision("baseline", baseline(18, 0.5 * BASELINE_PRECISION))
        _say_precision("baseline", Measurement(samples=synthetic().samples, settings={"repeats": 3}))  # fixed count
        assert [r for r in caplog.records if r.levelno >= logging.INFO] == []  # precise: DEBUG only
        _say_precision("baseline deployed merged", baseline(27, 0.0123))
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert line.startswith(
        "baseline deployed merged: the cap of 27 passes reached with a standard error of its latency level of 1.23%"
    )
