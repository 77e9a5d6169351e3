"""Benchmark 1 - harness overhead: what ``measure()`` costs on top of the ``generate`` calls it times.

Measures, per model, the wall time of ``measure(model, tok, prompts, warmup=0, repeats=R)`` against a
bare loop that makes exactly the same ``generate`` calls (the same prompts encoded here and left-padded
by hand, greedy, the same ``max_new_tokens``, the same repeats, under ``torch.inference_mode``), both
after one shared warm-up. The two conditions alternate (A B, B A, ...) and the overhead is the median of
the per-round ratios minus one, so a noisy machine's drift hits both alike. The overhead is also split
into the part outside the ``generate`` calls (set-up, bookkeeping: wall time minus the summed request
latencies) and the part inside them (the per-step timer), with batch_size=1.

Target: overhead within 5% on the tiny models and on SmolLM2-135M on CPU.

Run:
    python scripts/bench_overhead.py --quick                 # seconds, tiny-gpt2 (CI)
    python scripts/bench_overhead.py                         # tiny-gpt2, tiny-llama, smollm2
    python scripts/bench_overhead.py --models smollm2 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from _bench import cli, models, stats, table, timing  # before transformers: sets HF_HUB_OFFLINE
from _bench.report import Report, method_text

from ftcallback import measure

TARGET = 0.05


def settings(name: str, args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        base = {"prompts": 4, "max_new_tokens": 16, "repeats": 2, "rounds": 3}
    elif name == "smollm2":
        base = {"prompts": 4, "max_new_tokens": 32, "repeats": 2, "rounds": 6}
    else:
        base = {"prompts": 8, "max_new_tokens": 32, "repeats": 3, "rounds": 10}
    for key in base:
        value = getattr(args, key.replace("-", "_"))
        if value is not None:
            base[key] = value
    base["batch_size"] = args.batch_size
    return base


def bench_model(lm: models.LoadedModel, cfg: dict[str, int]) -> dict[str, Any]:
    prompts = lm.probe(cfg["prompts"])
    T, R, B = cfg["max_new_tokens"], cfg["repeats"], cfg["batch_size"]
    batches = models.left_padded_batches(lm, prompts, B)
    kw = models.generate_kwargs(lm, T)
    model, device = lm.model, lm.device
    call_times: list[float] = []
    bare_tokens: list[int] = []

    def bare() -> float:
        call_times.clear()
        bare_tokens.clear()
        timing.synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(R):
                for batch in batches:
                    t0 = time.perf_counter()
                    out = model.generate(**batch, **kw)
                    timing.synchronize(device)
                    call_times.append(time.perf_counter() - t0)
                    width = batch["input_ids"].shape[1]
                    bare_tokens.extend(
                        models.count_output_tokens(row, lm.eos_ids) for row in out[:, width:].tolist()
                    )
        return time.perf_counter() - start

    last: dict[str, Any] = {}

    def harness() -> float:
        m, seconds = timing.timed(
            lambda: measure(
                model,
                lm.tokenizer,
                prompts,
                max_new_tokens=T,
                warmup=0,
                repeats=R,
                batch_size=B,
                apply_chat_template=lm.chat,
            ),
            device,
        )
        last["m"] = m
        return seconds

    # One shared warm-up: a bare pass and a measure() call, untimed.
    bare()
    harness()
    timing.reset_peak_memory(device)
    inside: list[float] = []
    outside_ms: list[float] = []
    cpu: dict[str, list[float]] = {"measure": [], "bare": []}

    def harness_split() -> float:
        cpu0 = time.process_time()
        seconds = harness()
        cpu["measure"].append(time.process_time() - cpu0)
        if B == 1:
            summed = sum(s.latency_s for s in last["m"].samples)
            outside_ms.append((seconds - summed) * 1000.0)
            inside.append(summed)
        return seconds

    bare_calls: list[float] = []

    def bare_split() -> float:
        cpu0 = time.process_time()
        seconds = bare()
        cpu["bare"].append(time.process_time() - cpu0)
        bare_calls.append(sum(call_times))
        return seconds

    times = timing.interleaved(cfg["rounds"], {"measure": harness_split, "bare": bare_split})
    per_round = stats.ratios(times["measure"], times["bare"])
    overhead = stats.median(per_round) - 1.0
    m = last["m"]
    # measure() orders samples by repeat then prompt, as the bare loop does.
    ftc_tokens = [s.output_tokens for s in m.samples]
    out_tokens = sum(ftc_tokens)
    in_call = stats.median(stats.ratios(inside, bare_calls)) - 1.0 if inside else math.nan
    return {
        "model": lm.name,
        "settings": cfg,
        "calls_per_pass": R * len(batches),
        "output_tokens_per_pass": out_tokens,
        "measure_s": times["measure"],
        "bare_s": times["bare"],
        "round_ratios": per_round,
        "overhead": overhead,
        "overhead_min": min(per_round) - 1.0,
        "overhead_max": max(per_round) - 1.0,
        "outside_generate_ms": stats.median(outside_ms) if outside_ms else math.nan,
        "inside_generate_overhead": in_call,
        "inside_generate_us_per_token": (
            (stats.median(inside) - stats.median(bare_calls)) / out_tokens * 1e6
            if inside and out_tokens
            else math.nan
        ),
        # CPU time of the process: what the harness costs in work, blind to time spent descheduled.
        "cpu_overhead": stats.median(stats.ratios(cpu["measure"], cpu["bare"])) - 1.0,
        "token_counts_equal": ftc_tokens == bare_tokens,
        "peak_memory_mb": timing.peak_memory_mb(device),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="probe size")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per measure() call")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per condition")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=1)
    args = parser.parse_args(argv)
    device = cli.setup(args)
    report = Report(
        "overhead",
        "Harness overhead",
        f"measure() wall time within {TARGET:.0%} of a bare generate loop (tiny models and SmolLM2, CPU)",
        cli.command_line("bench_overhead.py", argv),
        args.quick,
        device,
        method=method_text(__doc__),
    )
    rows, results = [], []
    for name in cli.models_for(args):
        lm = models.load(name, device)
        cfg = settings(name, args)
        r = bench_model(lm, cfg)
        results.append(r)
        rows.append(
            [
                name,
                f"{cfg['prompts']} x {cfg['repeats']} (B={cfg['batch_size']})",
                cfg["max_new_tokens"],
                cfg["rounds"],
                stats.median(r["bare_s"]),
                stats.median(r["measure_s"]),
                table.pct(r["overhead"]),
                f"{table.pct(r['overhead_min'])} .. {table.pct(r['overhead_max'])}",
                table.fmt(r["outside_generate_ms"], 1),
                table.pct(r["inside_generate_overhead"]),
                table.pct(r["cpu_overhead"]),
                "yes" if r["token_counts_equal"] else "NO",
            ]
        )
        del lm
    report.results = {"models": results, "target": TARGET}
    report.table(
        f"Overhead of measure() over a bare generate loop ({device})",
        [
            "model",
            "prompts x repeats",
            "max_new_tokens",
            "rounds",
            "bare loop s",
            "measure() s",
            "overhead (median of round ratios)",
            "round range",
            "outside generate, ms",
            "inside generate",
            "CPU-time overhead",
            "same tokens",
        ],
        rows,
    )
    report.notes.append(
        "outside generate = measure() wall time minus the summed request latencies (set-up, bookkeeping, "
        "summary); inside generate = summed request latencies over the bare loop's summed call times "
        "(the per-step timestamp criterion). Both with batch_size=1. CPU-time overhead = the same ratio "
        "in process CPU time: the work measure() adds, blind to time the process spent descheduled; on a "
        "busy machine a wall-time overhead with no CPU-time overhead is scheduling noise, not the harness."
    )
    worst = max(results, key=lambda r: r["overhead"])
    ok = all(r["overhead"] <= TARGET for r in results) and all(r["token_counts_equal"] for r in results)
    text = ", ".join(f"{r['model']} {table.pct(r['overhead'])}" for r in results)
    if ok:
        report.decide(True, f"overhead {text} (target <= {TARGET:.0%})")
    else:
        why = (
            f"worst {worst['model']} {table.pct(worst['overhead'])} wall, "
            f"{table.pct(worst['cpu_overhead'])} CPU time"
            if worst["overhead"] > TARGET
            else "token counts of measure() and the bare loop differ"
        )
        report.decide(False, f"overhead {text} (target <= {TARGET:.0%}); {why}")
    return report.finish(args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
