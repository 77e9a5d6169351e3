"""Benchmark 8 - decisions on a busy machine: a slower machine is not a slower model.

Every run measures a baseline on the quiet machine and then a check, both with the real engine on a tiny
model, taken the way the callback takes them (its ``Prober``: the reference workload, a one-layer copy of the
model, timed before ``generate`` calls while it costs at most half their time; the baseline measured to a
precision, from 6 passes up to 27, until the standard error of its latency level is at most 0.75%; the
check with the adaptive rule from ``repeats=3`` up to 9), judged by ``evaluate(Budget(max_latency_increase=0.2),
check, baseline, seed=run)`` at patience 1 (a breach is a stop). Answers have a fixed length
(``min_new_tokens = max_new_tokens``), so only speed can change.
Conditions, interleaved within each run with their order rotating:

* unchanged model, with two busy processes (a Python ``while`` loop each) started after the
  baseline and stopped after the check;
* a per-token slowdown of +25% and +50% (forward hooks add a multiple of each forward pass's own CPU
  time as extra compute, spinning on the thread's CPU clock so that the added work is the same under
  load), with and without that load;
* +10% under the 0.2 budget, with and without that load (no stop expected).

The hook multiple for each level is found by measuring, not assumed: it starts from the level over the
share of latency spent in forward passes (as in benchmark 4) and is corrected twice (not in --quick) from interleaved
quiet baseline / slowed measurements, on their observed latency ratio (nothing divided out, so not the
estimator under test); the slowdown it then really causes is measured once more the same way and
reported beside each condition ("injected, measured quiet").

The same data are also judged at the check's first look alone (its first 3 repeats against the same
baseline: what the adaptive rule adds) and the way 0.1 did (3 repeats on both sides, no machine timings:
the machine's drift counted as the model's), to show what each part changes. Then answers that grow: a logits
processor makes every answer ``8 + 2 x epoch`` tokens long, and at each epoch
``evaluate(Budget(max_token_increase=0.2), ...)`` must first breach at the epoch where tokens counted by
hand from a bare ``generate`` call first exceed 1.2 x the baseline's; the latency decomposition there
must attribute the change to length. Last, the cost, interleaved on the unchanged model: the wall time
of a check and of a baseline at the callback's defaults over 0.1's (plain ``measure``, ``repeats=3``), and
of a run's baseline plus 3 checks. And where the judged ratio's spread comes from: pairs of a baseline and a
+25%-slowed check, 27 passes each (quiet, and with the load during the check), judged again with either side
cut to its first 3, 9 or 27 passes, beside the baseline's own standard error at each length (what the
callback's precision rule reads). And how well each reference workload tracks the model: windows of 24 calls
of the unchanged model, every other pair of windows with the two busy processes, both the 16-layer MLP (the
first yardstick) and the one-layer copy timed before every call, each call made
machine-free against each; the sd of a window's level from window to window, quiet and loaded, and how far the
load moves it, is the machine noise each yardstick would leave in a check.

Target: 0 false stops with load; +25% and +50% detected every time with and without load; 0 stops at
+10%; stop epoch = predicted epoch in every growing-answers run; cost ratio reported.

Run:
    python scripts/bench_drift.py --quick           # about a minute, 1 run per condition (CI)
    python scripts/bench_drift.py                   # 20 runs per condition, 8-token answers (10-20 min on 2 cores)
    python scripts/bench_drift.py --max-new-tokens 32   # the same with 4x longer calls (~25 min)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from _bench import cli, models, stats, timing  # before transformers: sets HF_HUB_OFFLINE
from _bench.report import Report, method_text
from bench_decisions import forward_share
from transformers import LogitsProcessor, LogitsProcessorList

from ftcallback import Budget, evaluate, measure
from ftcallback._decompose import level_uncertainty
from ftcallback._drift import ModelShapedReference, ReferenceWorkload
from ftcallback._errors import NoisyMeasurementWarning
from ftcallback._measure import thread_cpu_clock
from ftcallback._measurement import Measurement
from ftcallback._probe import ProbeSpec
from ftcallback._prober import Prober

BUDGET = Budget(max_latency_increase=0.2)
# A CPU-bound loop that ends by itself once its parent is gone (a killed benchmark or test leaves no load behind).
BUSY = "import os\nwhile os.getppid() == {}: pass"

TOKEN_BUDGET = Budget(max_token_increase=0.2)
MIN_RUNS = 20
MAX_REPEATS = 9
# The spread study: each side measured once at SPREAD_PASSES passes (3 in --quick), then judged cut to each of
# SPREAD_CUTS up to that.
SPREAD_PASSES = 27
SPREAD_CUTS = (3, 9, 27)
# The tracking study: generate calls per window (each with both reference workloads timed before it).
TRACKING_CALLS = 24
# (label, slowdown, background load)
CONDITIONS = (
    ("unchanged, load", 0.0, True),
    ("+10%", 0.10, False),
    ("+10%, load", 0.10, True),
    ("+25%", 0.25, False),
    ("+25%, load", 0.25, True),
    ("+50%", 0.50, False),
    ("+50%, load", 0.50, True),
)


class SlowDown:
    """Forward hooks that add ``factor`` x each eval-mode forward pass's own CPU time of extra work.

    Unlike benchmark 4's wall-clock spin, the delay is compute: the hook spins until this thread's CPU
    time has advanced by the owed amount, so a model made slower this way is slower by the same
    factor however much of the CPU other processes take, as a bigger model would be.
    """

    def __init__(self, model: torch.nn.Module, factor: float) -> None:
        self.factor, self._start, self._debt = factor, 0.0, 0.0
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        self._start = time.thread_time()

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if module.training:
            return
        now = time.thread_time()
        self._debt += self.factor * (now - self._start)
        target = now + self._debt
        while time.thread_time() < target:
            pass
        self._debt = target - time.thread_time()  # an overshoot is paid back by the next pass

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextlib.contextmanager
def background_load(on: bool, processes: int = 2) -> Iterator[None]:
    """``processes`` busy Python processes for the duration of the block (none when ``on`` is False)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", BUSY.format(os.getpid())]) for _ in range(processes if on else 0)
    ]
    try:
        if procs:
            time.sleep(0.2)  # let the scheduler spread them
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


class GrowingAnswers(LogitsProcessor):
    """Answers of exactly ``length`` tokens: ``filler`` until then, EOS at the last position."""

    def __init__(self, widths: dict[tuple[int, ...], int], filler: int, eos: int) -> None:
        self.widths = widths  # prompt ids -> prompt length, to tell how many tokens are new
        self.filler, self.eos, self.length = filler, eos, 1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, -math.inf)
        for row in range(input_ids.shape[0]):
            ids = input_ids[row].tolist()
            # batch_size=1: no padding, so the row starts with its prompt (the longest that matches).
            width = max(w for p, w in self.widths.items() if tuple(ids[:w]) == p)
            new = len(ids) - width
            out[row, self.eos if new >= self.length - 1 else self.filler] = 0.0
        return out


def settings(args: argparse.Namespace) -> dict[str, int]:
    cfg = (
        {"runs": 1, "prompts": 4, "max_new_tokens": 8, "epochs": 4, "cost_rounds": 1, "calibration_pairs": 1,
         "calibration_rounds": 0, "spread_pairs": 2, "spread_passes": 3, "tracking_windows": 4}
        if args.quick
        else {
            "runs": MIN_RUNS, "prompts": 4, "max_new_tokens": 8, "epochs": 4, "cost_rounds": 5, "calibration_pairs": 8,
            "calibration_rounds": 2, "spread_pairs": 20, "spread_passes": SPREAD_PASSES, "tracking_windows": 40,
        }
    )
    if args.runs is not None:
        cfg["runs"] = args.runs
    if args.max_new_tokens is not None:
        cfg["max_new_tokens"] = args.max_new_tokens
    return cfg


def plain(lm: models.LoadedModel, prompts: list[str], T: int) -> Measurement:
    """The callback's defaults without drift control (0.1): warmup=1, repeats=3."""
    return measure(lm.model, lm.tokenizer, prompts, max_new_tokens=T, generation_kwargs={"min_new_tokens": T})


def controlled(
    lm: models.LoadedModel, prompts: list[str], T: int, baseline: Measurement | None, seed: int
) -> Measurement:
    """A measurement taken the way the callback takes it, by its :class:`~ftcallback._prober.Prober`: the reference
    workload before every call; without a baseline (this *is* the baseline) 3 x ``repeats``; against one, the
    adaptive rule from ``repeats`` up to 3 x ``repeats``."""
    spec = ProbeSpec(prompts=tuple(prompts), max_new_tokens=T, generation_kwargs={"min_new_tokens": T}, seed=seed)
    prober = Prober(spec, BUDGET)
    prober.tokenizer = lm.tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurementWarning)  # the table says how noisy it was
        m, _ = prober.measure(lm.model, baseline=baseline, mode=None, beat=lambda: None, is_baseline=baseline is None)
    return m


def first_passes(m: Measurement, passes: int, *, drift_control: bool = True) -> Measurement:
    """``m`` cut to its first ``passes`` timed passes, as a fixed-size measurement of that many; with
    ``drift_control=False`` also without machine timings."""
    settings = {k: v for k, v in m.settings.items() if k != "sequential"}
    settings["repeats"] = min(passes, int(m.settings["repeats"]))
    batches = -(-int(m.settings["num_prompts"]) // int(m.settings["batch_size"]))
    calls = int(m.settings["warmup"]) + settings["repeats"] * batches
    return dataclasses.replace(
        m,
        samples=tuple(s for s in m.samples if s.repeat < settings["repeats"]),
        reference_s=m.reference_s[:calls] if drift_control else (),
        cpu_share=m.cpu_share[:calls] if drift_control else (),
        cpu_run_s=m.cpu_run_s[:calls] if drift_control else (),
        cpu_wait_s=m.cpu_wait_s[:calls] if drift_control else (),
        settings=settings,
    )


def first_look(m: Measurement, *, drift_control: bool = True) -> Measurement:
    """``m`` cut to its first 3 repeats: what the check would have said without the adaptive rule; with
    ``drift_control=False`` also without machine timings, i.e. 0.1's rule."""
    return first_passes(m, 3, drift_control=drift_control)


def calibrate(
    lm: models.LoadedModel, prompts: list[str], T: int, share: float, target: float, pairs: int, rounds: int = 2
) -> float:
    """The hook multiple that makes the model ``target`` slower here, found by measuring, not assumed.

    Starts from ``target / share`` and corrects it twice from ``pairs`` interleaved baseline / slowed
    measurements (the geometric mean of their observed latency ratios): the added work is
    ``multiple x forward time``, so the slowdown it buys is linear in the multiple.
    """
    multiple = target / share
    for _ in range(rounds):
        achieved = injected(lm, prompts, T, multiple, pairs) - 1.0
        if achieved > 0:
            multiple *= target / achieved
    return multiple


def injected(lm: models.LoadedModel, prompts: list[str], T: int, multiple: float, pairs: int) -> float:
    """The slowdown ``multiple`` really causes: geometric mean of ``pairs`` observed latency ratios (the raw
    paired ratio, nothing divided out: not the estimator under test), no background load."""
    logs = []
    for run in range(pairs):
        baseline = controlled(lm, prompts, T, None, run)
        hooks = SlowDown(lm.model, multiple)
        try:
            check = controlled(lm, prompts, T, None, run)
        finally:
            hooks.remove()
        observed = evaluate(BUDGET, check, baseline, seed=run).decomposition
        assert observed is not None
        logs.append(math.log(observed.total))
    return math.exp(sum(logs) / len(logs))


def drift_runs(
    lm: models.LoadedModel, cfg: dict[str, int], multiples: dict[float, float]
) -> list[dict[str, Any]]:
    prompts = lm.probe(cfg["prompts"])
    T = cfg["max_new_tokens"]
    out = []
    for run in range(cfg["runs"]):
        k = run % len(CONDITIONS)
        for label, slowdown, load in CONDITIONS[k:] + CONDITIONS[:k]:
            baseline = controlled(lm, prompts, T, None, run)
            hooks = SlowDown(lm.model, multiples[slowdown]) if slowdown > 0 else None
            try:
                with background_load(load):
                    check = controlled(lm, prompts, T, baseline, run)
            finally:
                if hooks is not None:
                    hooks.remove()
            verdict = evaluate(BUDGET, check, baseline, seed=run)
            latency = verdict.checks[0]
            first = evaluate(BUDGET, first_look(check), baseline, seed=run).checks[0]
            old = evaluate(
                BUDGET, first_look(check, drift_control=False), first_look(baseline, drift_control=False), seed=run
            ).checks[0]
            d = verdict.decomposition
            out.append(
                {
                    "run": run,
                    "condition": label,
                    "slowdown": slowdown,
                    "load": load,
                    "stopped": bool(latency.breached),
                    "ratio": latency.ratio,
                    "low": latency.interval[0] if latency.interval else math.nan,
                    "high": latency.interval[1] if latency.interval else math.nan,
                    "raw_total": d.total if d else math.nan,
                    "machine": verdict.machine.estimate.ratio if verdict.machine else math.nan,
                    "machine_moved": bool(verdict.machine and verdict.machine.moved),
                    "repeats": check.settings["repeats"],
                    "baseline_repeats": baseline.settings["repeats"],
                    "first_look_stopped": bool(first.breached),
                    "old_stopped": bool(old.breached),
                    "old_ratio": old.ratio,
                    "wall_s": check.wall_time_s,
                }
            )
            print(f"run {run} {label:16s} stop={latency.breached!s:5} {latency.describe()}", flush=True)
    return out


def growth_runs(lm: models.LoadedModel, cfg: dict[str, int], ref: ReferenceWorkload) -> list[dict[str, Any]]:
    prompts = lm.probe(cfg["prompts"])
    encoded = models.encode(lm, prompts)
    eos = int(lm.tokenizer.eos_token_id)
    lasts = {ids[-1] for ids in encoded}
    filler = next(t for t in range(10, 1000) if t not in lasts and t not in lm.eos_ids and t != lm.pad_id)
    proc = GrowingAnswers({tuple(ids): len(ids) for ids in encoded}, filler, eos)
    T = 8 + 2 * cfg["epochs"] + 2
    kwargs = {"logits_processor": LogitsProcessorList([proc])}
    batches = models.left_padded_batches(lm, prompts, 1)
    out = []
    for run in range(cfg["runs"]):
        counts, measured = [], []
        for epoch in range(cfg["epochs"]):
            proc.length = 8 + 2 * epoch
            # The independent count: a bare generate, its new tokens counted up to the first EOS by hand.
            with torch.no_grad():
                hand = []
                for b in batches:
                    ids = lm.model.generate(
                        **b, **models.generate_kwargs(lm, T), logits_processor=LogitsProcessorList([proc])
                    )
                    hand.append(models.count_output_tokens(ids[0, b["input_ids"].shape[1] :].tolist(), lm.eos_ids))
            counts.append(sum(hand) / len(hand))
            # Measured at the callback's defaults (warm-up 1, repeats 3, the reference workload): the token
            # count decides here, and it is exact; the decomposition's speed part gets its usual data.
            measured.append(
                measure(
                    lm.model, lm.tokenizer, prompts, max_new_tokens=T, generation_kwargs=kwargs, reference=ref,
                )
            )
        predicted = next((e for e in range(1, len(counts)) if counts[e] > 1.2 * counts[0]), None)
        verdicts = [evaluate(TOKEN_BUDGET, m, measured[0], seed=run) for m in measured[1:]]
        stopped = next((e for e, v in enumerate(verdicts, start=1) if not v.passed), None)
        d = verdicts[(stopped or 1) - 1].decomposition
        out.append(
            {
                "run": run,
                "counts": counts,
                "predicted_epoch": predicted,
                "stop_epoch": stopped,
                "match": predicted == stopped,
                "decomposition": d.describe() if d else "",
                "length_share": (math.log(d.length) / math.log(d.total)) if d and d.total > 1 else math.nan,
            }
        )
        print(f"growth run {run}: predicted {predicted}, stopped {stopped}; {d.describe() if d else ''}", flush=True)
    return out


def spread_runs(lm: models.LoadedModel, cfg: dict[str, int], multiple: float) -> dict[str, Any]:
    """Where the judged ratio's spread comes from: the baseline's passes or the check's.

    ``spread_pairs`` pairs per condition (quiet, and the two busy processes during the check): a baseline
    and a +25%-slowed check of ``SPREAD_PASSES`` passes each, both with the reference workload, then judged
    with each side cut to its first 3 / 9 / 27 passes. Beside it, the baseline's own standard error
    (:func:`~ftcallback._decompose.level_uncertainty`) at each length: what the callback's precision rule reads.
    """
    prompts = lm.probe(cfg["prompts"])
    T = cfg["max_new_tokens"]
    ref = reference_for(lm)

    def fixed(passes: int) -> Measurement:
        return measure(
            lm.model, lm.tokenizer, prompts, max_new_tokens=T, generation_kwargs={"min_new_tokens": T},
            repeats=passes, reference=ref,
        )

    passes = cfg["spread_passes"]
    cuts = tuple(c for c in SPREAD_CUTS if c <= passes)
    rows, levels = [], []
    for load in (False, True):
        logs: dict[tuple[int, int], list[float]] = {}
        se: dict[int, list[float]] = {}
        for pair in range(cfg["spread_pairs"]):
            baseline = fixed(passes)
            hooks = SlowDown(lm.model, multiple)
            try:
                with background_load(load):
                    check = fixed(passes)
            finally:
                hooks.remove()
            for b in cuts:
                base = first_passes(baseline, b)
                se.setdefault(b, []).append(level_uncertainty(base, seed=pair))
                for c in cuts:
                    judged = evaluate(BUDGET, first_passes(check, c), base, seed=pair).checks[0].ratio
                    logs.setdefault((b, c), []).append(math.log(judged))
            tag = ", load" if load else ""
            top = cuts[-1]
            print(f"spread pair {pair}{tag}: judged at {top}/{top} passes x{math.exp(logs[top, top][-1]):.3f}",
                  flush=True)
        label = "+25%, load during the check" if load else "+25%, quiet"
        for (b, c), values in logs.items():
            rows.append({"condition": label, "baseline_passes": b, "check_passes": c, "pairs": len(values),
                         "sd_log": statistics.stdev(values), "geomean": math.exp(sum(values) / len(values)),
                         "lowest": math.exp(min(values))})
        levels.extend({"condition": label, "baseline_passes": b, "median_se": stats.median(v)} for b, v in se.items())
    return {"rows": rows, "levels": levels}


def tracking_runs(lm: models.LoadedModel, cfg: dict[str, int]) -> list[dict[str, Any]]:
    """How well each reference workload tracks the model: the yardstick of the machine, compared on the same calls.

    ``tracking_windows`` windows of ``TRACKING_CALLS`` ``generate`` calls on the unchanged model, 2 s apart, every
    other pair of windows with the two busy processes. Before every call both workloads are timed (thread CPU
    time, as ``measure`` times them); each call's latency is then made machine-free against each one the way
    :func:`~ftcallback._decompose.decompose` does it (the run-queue wait taken out, the computing divided by the
    reference's local speed). A window's level is its median; a good yardstick leaves the level flat from window to
    window (quiet, loaded) and unmoved by the load: whatever moves is machine noise a check would judge.
    """
    prompts = lm.probe(cfg["prompts"])
    T = cfg["max_new_tokens"]
    refs = {"16-layer MLP": ReferenceWorkload(lm.device), "one-layer copy of the model": reference_for(lm)}
    clock = thread_cpu_clock()
    if clock is None or lm.device.type != "cpu":
        return []
    ids = [lm.tokenizer(p, return_tensors="pt").to(lm.device) for p in prompts]
    windows: list[dict[str, Any]] = []
    for w in range(cfg["tracking_windows"]):
        load = w % 4 >= 2
        calls = []
        with background_load(load):
            for c in range(TRACKING_CALLS):
                times = {name: ref.seconds(lambda: clock()[0]) for name, ref in refs.items()}
                cpu0, start = clock(), time.perf_counter()
                with torch.no_grad():
                    lm.model.generate(**ids[c % len(ids)], max_new_tokens=T, min_new_tokens=T, do_sample=False)
                wall, cpu1 = time.perf_counter() - start, clock()
                calls.append((wall, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], times))
        windows.append({"load": load, "calls": calls})
        time.sleep(2.0)
    scale = {name: stats.median([c[3][name] for w in windows for c in w["calls"]]) for name in refs}

    def level(window: dict[str, Any], name: str | None) -> float:
        free = []
        for wall, ran, waited, times in window["calls"]:
            device = times[name] / scale[name] if name is not None else 1.0
            free.append(wall * (ran / wall / device + max(0.0, 1.0 - ran / wall - waited / wall)))
        return math.log(stats.median(free))

    rows = []
    for name in (None, *refs):
        quiet = [level(w, name) for w in windows if not w["load"]]
        loaded = [level(w, name) for w in windows if w["load"]]
        rows.append({
            "reference": name or "none (run-queue wait taken out only)",
            "windows": len(windows),
            "quiet_sd": statistics.pstdev(quiet),
            "load_sd": statistics.pstdev(loaded),
            "load_shift": statistics.fmean(loaded) - statistics.fmean(quiet),
            "reference_ms": 1e3 * scale[name] if name is not None else math.nan,
        })
    return rows


def reference_for(lm: models.LoadedModel) -> ReferenceWorkload:
    """The reference workload the callback's Prober builds for this model."""
    return ModelShapedReference.for_model(lm.model, lm.device)


def cost_rounds(lm: models.LoadedModel, cfg: dict[str, int]) -> dict[str, Any]:
    prompts = lm.probe(cfg["prompts"])
    T = cfg["max_new_tokens"]
    baseline = controlled(lm, prompts, T, None, 0)
    ref = reference_for(lm)

    def old() -> float:  # 0.1's check and baseline alike: repeats=3, no machine timings
        return plain(lm, prompts, T).wall_time_s

    def with_reference() -> float:
        return measure(
            lm.model, lm.tokenizer, prompts, max_new_tokens=T, generation_kwargs={"min_new_tokens": T}, reference=ref
        ).wall_time_s

    def check() -> float:
        return controlled(lm, prompts, T, baseline, 0).wall_time_s

    def new_baseline() -> float:
        return controlled(lm, prompts, T, None, 0).wall_time_s

    times = timing.interleaved(
        cfg["cost_rounds"],
        {"0.1 defaults": old, "reference": with_reference, "check": check, "baseline": new_baseline},
    )
    old_s = stats.median(times["0.1 defaults"])
    check_s, base_s = stats.median(times["check"]), stats.median(times["baseline"])
    epochs = 3
    return {
        "old_s": old_s,
        "reference_s": stats.median(times["reference"]),
        "check_s": check_s,
        "baseline_s": base_s,
        "reference_cost_ratio": stats.median(stats.ratios(times["reference"], times["0.1 defaults"])),
        "cost_ratio": stats.median(stats.ratios(times["check"], times["0.1 defaults"])),
        "baseline_cost_ratio": stats.median(stats.ratios(times["baseline"], times["0.1 defaults"])),
        "run_epochs": epochs,
        "run_cost_ratio": (base_s + epochs * check_s) / ((1 + epochs) * old_s),
        "reference_ms": stats.median([ref.seconds() for _ in range(20)]) * 1e3,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help=f"runs per condition (>= {MIN_RUNS} in full mode)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="tokens per answer in the drift runs (default 8: short calls, the hardest case for timing)",
    )
    args = parser.parse_args(argv)
    device = cli.setup(args)
    if args.threads is None:
        torch.set_num_threads(1)  # the load is two busy processes on a small machine: one thread for the probe
    report = Report(
        "drift",
        "Decisions on a busy machine",
        f"max_latency_increase=0.2, patience 1, >= {MIN_RUNS} runs each: 0 false stops with background load "
        "after the baseline; +25%/+50% detected every time with and without load; 0 stops at +10%; "
        "growing answers stop at the epoch counted by hand; measurement cost at defaults reported",
        cli.command_line("bench_drift.py", argv),
        args.quick,
        device,
        method=method_text(__doc__),
    )
    results = []
    for name in cli.models_for(args, ("tiny-gpt2",)):
        lm = models.load(name, device)
        cfg = settings(args)
        prompts = lm.probe(cfg["prompts"])
        plain(lm, prompts, cfg["max_new_tokens"])  # warm-up, untimed
        share = forward_share(lm, prompts, cfg["max_new_tokens"])
        load_before = os.getloadavg()[0]
        levels = sorted({slowdown for _, slowdown, _ in CONDITIONS if slowdown > 0})
        multiples = {
            level: calibrate(
                lm, prompts, cfg["max_new_tokens"], share, level, cfg["calibration_pairs"], cfg["calibration_rounds"]
            )
            for level in levels
        }
        achieved = {
            level: injected(lm, prompts, cfg["max_new_tokens"], multiples[level], cfg["calibration_pairs"])
            for level in levels
        }
        print("injected slowdowns, measured: " + ", ".join(f"+{v:.0%} -> x{achieved[v]:.3f}" for v in levels))
        runs = drift_runs(lm, cfg, multiples)
        growth = growth_runs(lm, cfg, reference_for(lm))
        cost = cost_rounds(lm, cfg)
        spread = spread_runs(lm, cfg, multiples[0.25])
        tracking = tracking_runs(lm, cfg)
        summary = []
        for label, slowdown, load in CONDITIONS:
            sel = [r for r in runs if r["condition"] == label]
            summary.append(
                {
                    "condition": label,
                    "slowdown": slowdown,
                    "load": load,
                    "runs": len(sel),
                    "stops": sum(r["stopped"] for r in sel),
                    "old_stops": sum(r["old_stopped"] for r in sel),
                    "first_look_stops": sum(r["first_look_stopped"] for r in sel),
                    "injected": achieved.get(slowdown, 1.0),
                    "ratio_median": stats.median([r["ratio"] for r in sel]),
                    "raw_median": stats.median([r["raw_total"] for r in sel]),
                    "machine_median": stats.median([r["machine"] for r in sel]),
                    "machine_moved": sum(r["machine_moved"] for r in sel),
                    "repeats_mean": sum(r["repeats"] for r in sel) / len(sel),
                    "baseline_repeats_mean": sum(r["baseline_repeats"] for r in sel) / len(sel),
                }
            )
        results.append(
            {
                "model": lm.name,
                "settings": cfg,
                "forward_share": share,
                "hook_multiples": multiples,
                "injected_measured": achieved,
                "load_average_start": load_before,
                "load_average_end": os.getloadavg()[0],
                "runs": runs,
                "summary": summary,
                "growth": growth,
                "growth_matches": sum(g["match"] for g in growth),
                "cost_ratio": cost["cost_ratio"],
                "cost": cost,
                "spread": spread,
                "tracking": tracking,
            }
        )
    for r in results:
        cfg = r["settings"]
        report.table(
            f"{r['model']}: {cfg['prompts']} prompts x {cfg['max_new_tokens']} tokens, warmup=1, repeats=3 "
            f"(adaptive up to {MAX_REPEATS}), budget max_latency_increase=0.2, patience 1; load average "
            f"{r['load_average_start']:.1f} at start, {r['load_average_end']:.1f} at end",
            [
                "condition",
                "injected, measured quiet",
                "runs",
                "stops",
                "stops at the first look (no adaptive rule)",
                "stops without drift control (0.1 rule)",
                "median judged ratio",
                "median raw latency ratio",
                "median machine factor",
                "machine moved",
                "mean repeats",
                "mean baseline repeats",
            ],
            [
                [
                    s["condition"],
                    f"x{s['injected']:.3f}",
                    s["runs"],
                    s["stops"],
                    s["first_look_stops"],
                    s["old_stops"],
                    s["ratio_median"],
                    s["raw_median"],
                    s["machine_median"],
                    f"{s['machine_moved']}/{s['runs']}",
                    f"{s['repeats_mean']:.1f}",
                    f"{s['baseline_repeats_mean']:.1f}",
                ]
                for s in r["summary"]
            ],
        )
        g = r["growth"]
        report.table(
            f"{r['model']}: growing answers (8 + 2 x epoch tokens), Budget(max_token_increase=0.2)",
            ["runs", "stop epoch = hand-counted prediction", "predicted epoch", "decomposition at the stop"],
            [[len(g), f"{r['growth_matches']}/{len(g)}", g[0]["predicted_epoch"] if g else "-",
              g[0]["decomposition"] if g else "-"]],
        )
        c = r["cost"]
        report.table(
            f"{r['model']}: measurement cost at defaults (unchanged model, {cfg['cost_rounds']} interleaved rounds; "
            "0.1: every measurement repeats=3, no machine timings)",
            [
                "0.1 measurement (s)",
                "with reference only (s)",
                "check at defaults (s)",
                "baseline at defaults (s)",
                "ratio, reference only",
                "ratio, check",
                "ratio, baseline (once per run)",
                f"ratio, baseline + {c['run_epochs']} checks",
                "one reference run (ms)",
            ],
            [
                [
                    c["old_s"],
                    c["reference_s"],
                    c["check_s"],
                    c["baseline_s"],
                    c["reference_cost_ratio"],
                    c["cost_ratio"],
                    c["baseline_cost_ratio"],
                    c["run_cost_ratio"],
                    c["reference_ms"],
                ]
            ],
        )
        sp = r["spread"]
        se = {(x["condition"], x["baseline_passes"]): x["median_se"] for x in sp["levels"]}
        report.table(
            f"{r['model']}: where the judged ratio's spread comes from ({cfg['spread_pairs']} pairs per condition, "
            f"+25% injected, each side measured at {cfg['spread_passes']} passes and judged cut to fewer)",
            [
                "condition",
                "baseline passes",
                "check passes",
                "spread (sd of log judged ratio)",
                "geometric mean",
                "lowest",
                "baseline's own standard error (median)",
            ],
            [
                [x["condition"], x["baseline_passes"], x["check_passes"], f"{100 * x['sd_log']:.1f}%",
                 x["geomean"], x["lowest"], f"{100 * se[x['condition'], x['baseline_passes']]:.2f}%"]
                for x in sp["rows"]
            ],
        )
        if r["tracking"]:
            report.table(
                f"{r['model']}: how well each reference workload tracks the model "
                f"({r['tracking'][0]['windows']} windows of {TRACKING_CALLS} calls, every other pair with the two busy "
                "processes; sd of the window's "
                "machine-free latency level)",
                ["reference workload", "one timing (ms)", "sd, quiet windows", "sd, loaded windows",
                 "loaded over quiet"],
                [[t["reference"], "-" if math.isnan(t["reference_ms"]) else f"{t['reference_ms']:.2f}",
                  f"{100 * t['quiet_sd']:.2f}%", f"{100 * t['load_sd']:.2f}%", f"{100 * t['load_shift']:+.2f}%"]
                 for t in r["tracking"]],
            )
    report.results = {"models": results, "budget": BUDGET.to_dict(), "patience": 1}
    problems, texts = [], []
    for r in results:
        by = {s["condition"]: s for s in r["summary"]}
        for label, slowdown, _ in CONDITIONS:
            s = by[label]
            if slowdown < 0.2 and s["stops"]:
                problems.append(f"{s['stops']}/{s['runs']} stops at {label}")
            if slowdown > 0.2 and s["stops"] < s["runs"]:
                problems.append(f"{s['runs'] - s['stops']}/{s['runs']} missed at {label}")
        if r["growth_matches"] < len(r["growth"]):
            problems.append(f"growth stop epoch off in {len(r['growth']) - r['growth_matches']} runs")
        texts.append(
            f"{r['model']}: "
            + ", ".join(f"{s['condition']} {s['stops']}/{s['runs']}" for s in r["summary"])
            + f"; growth {r['growth_matches']}/{len(r['growth'])}; cost x{r['cost_ratio']:.2f}"
        )
    few = " (--quick: too few runs to judge)" if args.quick else ""
    report.decide(not problems, "; ".join(texts + problems) + few)
    return report.finish(args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
