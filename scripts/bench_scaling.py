"""Benchmark 6 - scaling: how the time of one measurement grows with prompts, max_new_tokens, batch_size.

One factor at a time from a base probe, each cell one ``measure(..., warmup=1, repeats=1)`` (the median
of ``--cell-repeats`` of them) with a fixed output length (``min_new_tokens = max_new_tokens``), timed
by wall clock around the call (device-synchronised). Reported per cell: generate calls, output tokens,
wall time, the ratio to the base cell, milliseconds per output token, and peak device memory on CUDA.
A check's cost is this times ``repeats`` (plus the warm-up call): see bench_training.py for the model.

Target (the issue sets none; ours): no super-linear cost in the harness, i.e. the log-log slope of
wall time against prompts and against max_new_tokens is <= 1.15.

Run:
    python scripts/bench_scaling.py --quick                  # seconds, tiny-gpt2 (CI)
    python scripts/bench_scaling.py                          # tiny-gpt2 and smollm2
    python scripts/bench_scaling.py --models smollm2 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from _bench import cli, models, stats, table, timing  # before transformers: sets HF_HUB_OFFLINE
from _bench.report import Report, method_text

from ftcallback import measure

MAX_SLOPE = 1.15


def grid(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return {
            "base": {"prompts": 4, "max_new_tokens": 8, "batch_size": 1},
            "prompts": [2, 4, 8],
            "max_new_tokens": [8, 16, 32],
            "batch_size": [1, 2, 4],
            "cell_repeats": 1,
        }
    if name == "smollm2":
        return {
            "base": {"prompts": 4, "max_new_tokens": 16, "batch_size": 1},
            "prompts": [2, 4, 8],
            "max_new_tokens": [8, 16, 32],
            "batch_size": [1, 2, 4],
            "cell_repeats": args.cell_repeats or 1,
        }
    return {
        "base": {"prompts": 8, "max_new_tokens": 32, "batch_size": 1},
        "prompts": [2, 4, 8, 16],
        "max_new_tokens": [16, 32, 64, 128],
        "batch_size": [1, 2, 4, 8],
        "cell_repeats": args.cell_repeats or 3,
    }


def cell(
    lm: models.LoadedModel, prompts: int, max_new_tokens: int, batch_size: int, repeats: int
) -> dict[str, Any]:
    probe = lm.probe(prompts)
    walls, peaks = [], []
    m = None
    for _ in range(repeats):
        timing.reset_peak_memory(lm.device)
        m, seconds = timing.timed(
            lambda: measure(
                lm.model,
                lm.tokenizer,
                probe,
                max_new_tokens=max_new_tokens,
                generation_kwargs={"min_new_tokens": max_new_tokens},
                warmup=1,
                repeats=1,
                batch_size=batch_size,
                apply_chat_template=lm.chat,
            ),
            lm.device,
        )
        walls.append(seconds)
        peaks.append(timing.peak_memory_mb(lm.device))
    assert m is not None
    calls = 1 + math.ceil(prompts / batch_size)
    tokens = sum(s.output_tokens for s in m.samples)
    wall = stats.median(walls)
    return {
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "calls": calls,
        "output_tokens": tokens,
        "wall_s": wall,
        "walls_s": walls,
        # Timed tokens only; the warm-up call's tokens are part of the wall time, so this is an upper bound.
        "ms_per_output_token": wall / tokens * 1000 if tokens else math.nan,
        "ttft_ms_p50": m.ttft_ms.p50,
        "tpot_ms_p50": m.tpot_ms.p50,
        "peak_memory_mb": peaks[-1],
    }


def slope(cells: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of log(wall time) against log(``key``) over the cells."""
    points = [(math.log(c[key]), math.log(c["wall_s"])) for c in cells if c[key] > 0 and c["wall_s"] > 0]
    if len(points) < 2:
        return math.nan
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else math.nan


def bench_model(lm: models.LoadedModel, g: dict[str, Any]) -> dict[str, Any]:
    base = g["base"]
    cell(lm, base["prompts"], base["max_new_tokens"], 1, 1)  # warm-up, untimed
    out: dict[str, Any] = {"model": lm.name, "grid": g, "factors": {}}
    for factor in ("prompts", "max_new_tokens", "batch_size"):
        cells = []
        for value in g[factor]:
            cfg = {**base, factor: value}
            if factor == "batch_size":
                cfg["prompts"] = max(g["batch_size"])
            cells.append(
                cell(lm, cfg["prompts"], cfg["max_new_tokens"], cfg["batch_size"], g["cell_repeats"])
            )
        out["factors"][factor] = cells
    out["slope_prompts"] = slope(out["factors"]["prompts"], "prompts")
    out["slope_max_new_tokens"] = slope(out["factors"]["max_new_tokens"], "max_new_tokens")
    bs = out["factors"]["batch_size"]
    out["batch_speedup"] = bs[0]["wall_s"] / bs[-1]["wall_s"] if bs[-1]["wall_s"] > 0 else math.nan
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cell-repeats", dest="cell_repeats", type=int, default=None, help="measurements per cell"
    )
    args = parser.parse_args(argv)
    device = cli.setup(args)
    report = Report(
        "scaling",
        "Scaling of measurement time",
        f"wall time grows at most linearly: log-log slope <= {MAX_SLOPE} in prompts and in max_new_tokens "
        "(our target; the issue asks for the table)",
        cli.command_line("bench_scaling.py", argv),
        args.quick,
        device,
        method=method_text(__doc__),
    )
    results = []
    for name in cli.models_for(args, ("tiny-gpt2", "smollm2")):
        lm = models.load(name, device)
        results.append(bench_model(lm, grid(name, args)))
        del lm
    for r in results:
        base = r["grid"]["base"]
        rows = []
        for factor, cells in r["factors"].items():
            ref = next((c for c in cells if c[factor] == base[factor]), cells[0])
            for c in cells:
                rows.append(
                    [
                        factor,
                        c[factor],
                        f"{c['prompts']} / {c['max_new_tokens']} / {c['batch_size']}",
                        c["calls"],
                        c["output_tokens"],
                        c["wall_s"],
                        f"x{c['wall_s'] / ref['wall_s']:.2f}" if ref["wall_s"] > 0 else "-",
                        c["ms_per_output_token"],
                        table.fmt(c["peak_memory_mb"], 1),
                    ]
                )
        report.table(
            f"{r['model']}: one measure(warmup=1, repeats=1) per cell, median of "
            f"{r['grid']['cell_repeats']} ({device}); slopes: prompts {r['slope_prompts']:.2f}, "
            f"max_new_tokens {r['slope_max_new_tokens']:.2f}; batch "
            f"{r['factors']['batch_size'][-1]['batch_size']} is x{r['batch_speedup']:.2f} faster than 1",
            [
                "factor",
                "value",
                "prompts / max_new_tokens / batch",
                "calls",
                "output tokens",
                "wall s",
                "vs base",
                "ms per output token",
                "peak MiB (CUDA)",
            ],
            rows,
        )
    report.notes.append(
        "calls = warmup + repeats x ceil(prompts / batch_size); a check with the defaults costs "
        "(1 + 3 x prompts) calls. The warm-up call makes small probes look sub-linear."
    )
    report.results = {"models": results, "max_slope": MAX_SLOPE}
    ok = all(r["slope_prompts"] <= MAX_SLOPE and r["slope_max_new_tokens"] <= MAX_SLOPE for r in results)
    text = ", ".join(
        f"{r['model']} slope {r['slope_prompts']:.2f} in prompts, {r['slope_max_new_tokens']:.2f} in "
        f"max_new_tokens, batch x{r['batch_speedup']:.2f}"
        for r in results
    )
    report.decide(ok, f"{text} (target slope <= {MAX_SLOPE})")
    return report.finish(args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
