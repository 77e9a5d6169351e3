"""Benchmark 5 - agreement with an independent timer and an independent token count.

Latency: for each prompt (batch_size=1, greedy, the same ``max_new_tokens``), ftcallback's end-to-end
latency (``measure(..., warmup=1, repeats=R/2)``, per-request samples) against
``torch.utils.benchmark.Timer(stmt="model.generate(**inputs, **kw)").blocked_autorange()`` around the
same call (the inputs encoded here, not by ftcallback; the Timer's own warm-up; its threads set to
torch's). Each prompt is timed twice each way, in the order ftcallback, Timer, then Timer, ftcallback,
and the samples pooled, so drift hits both alike. Compared: per-prompt medians.

Tokens: ftcallback's output-token count per request against a count by hand from the ids that a plain
``model.generate`` returns: new ids up to and including the first EOS (the model's and the tokenizer's
EOS ids). Re-tokenising the decoded text is not the reference: it differs by design. Input tokens are
compared the same way.

Target: per-prompt medians within 3% (judged on the median over prompts; the worst prompt is shown);
output and input token counts equal for every prompt.

Run:
    python scripts/bench_agreement.py --quick                # seconds, tiny-gpt2 (CI)
    python scripts/bench_agreement.py                        # tiny-gpt2, tiny-llama, smollm2
    python scripts/bench_agreement.py --models smollm2 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import torch
from _bench import cli, models, stats, table  # before transformers: sets HF_HUB_OFFLINE
from _bench.report import Report, method_text
from torch.utils.benchmark import Timer

from ftcallback import measure

TARGET = 0.03


def settings(name: str, args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        cfg = {"prompts": 3, "max_new_tokens": 16, "repeats": 4}
    elif name == "smollm2":
        cfg = {"prompts": 4, "max_new_tokens": 48, "repeats": 6}
    else:
        cfg = {"prompts": 6, "max_new_tokens": 32, "repeats": 10}
    for key in cfg:
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    cfg["repeats"] = max(2, cfg["repeats"] + cfg["repeats"] % 2)  # two halves
    return cfg


def bench_model(lm: models.LoadedModel, cfg: dict[str, int]) -> dict[str, Any]:
    prompts = lm.probe(cfg["prompts"])
    T, half = cfg["max_new_tokens"], cfg["repeats"] // 2
    kw = models.generate_kwargs(lm, T)
    encoded = models.encode(lm, prompts)
    ftc: dict[int, list[float]] = {i: [] for i in range(len(prompts))}
    ref: dict[int, list[float]] = {i: [] for i in range(len(prompts))}
    ftc_out: dict[int, set[int]] = {i: set() for i in range(len(prompts))}
    ftc_in: dict[int, set[int]] = {i: set() for i in range(len(prompts))}
    hand_out: dict[int, int] = {}

    def run_ftc(i: int) -> None:
        m = measure(
            lm.model,
            lm.tokenizer,
            [prompts[i]],
            max_new_tokens=T,
            warmup=1,
            repeats=half,
            apply_chat_template=lm.chat,
        )
        ftc[i].extend(s.latency_s for s in m.samples)
        ftc_out[i].update(s.output_tokens for s in m.samples)
        ftc_in[i].update(s.input_tokens for s in m.samples)

    def run_timer(i: int) -> None:
        ids = torch.tensor([encoded[i]], dtype=torch.long, device=lm.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        timer = Timer(
            stmt="model.generate(**inputs, **kw)",
            globals={"model": lm.model, "inputs": inputs, "kw": kw},
            num_threads=torch.get_num_threads(),
            label="generate",
        )
        estimate = stats.median(ftc[i]) if ftc[i] else 0.05
        with torch.inference_mode():
            result = timer.blocked_autorange(min_run_time=half * estimate * 0.9)
        ref[i].extend(t / result.number_per_run for t in result.raw_times)
        if i not in hand_out:
            with torch.inference_mode():
                out = lm.model.generate(**inputs, **kw)
            hand_out[i] = models.count_output_tokens(out[0, ids.shape[1] :].tolist(), lm.eos_ids)

    for i in range(len(prompts)):
        run_ftc(i)
        run_timer(i)
    for i in reversed(range(len(prompts))):
        run_timer(i)
        run_ftc(i)

    per_prompt: list[dict[str, Any]] = []
    for i in range(len(prompts)):
        a, b = stats.median(ftc[i]), stats.median(ref[i])
        per_prompt.append(
            {
                "prompt": i,
                "ftcallback_ms": a * 1000,
                "timer_ms": b * 1000,
                "ratio": a / b if b > 0 else math.nan,
                "ftcallback_samples": len(ftc[i]),
                "timer_samples": len(ref[i]),
                "ftcallback_output_tokens": sorted(ftc_out[i]),
                "hand_output_tokens": hand_out[i],
                "ftcallback_input_tokens": sorted(ftc_in[i]),
                "hand_input_tokens": len(encoded[i]),
            }
        )
    ratio = stats.median([p["ratio"] for p in per_prompt])
    worst = max(per_prompt, key=lambda p: abs(p["ratio"] - 1.0))
    tokens_equal = all(p["ftcallback_output_tokens"] == [p["hand_output_tokens"]] for p in per_prompt)
    inputs_equal = all(p["ftcallback_input_tokens"] == [p["hand_input_tokens"]] for p in per_prompt)
    return {
        "model": lm.name,
        "settings": cfg,
        "per_prompt": per_prompt,
        "ratio": ratio,
        "deviation": ratio - 1.0,
        "worst_deviation": worst["ratio"] - 1.0,
        "output_tokens_equal": tokens_equal,
        "input_tokens_equal": inputs_equal,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="probe size")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="samples per prompt and timer (even)")
    args = parser.parse_args(argv)
    device = cli.setup(args)
    report = Report(
        "agreement",
        "Agreement with torch.utils.benchmark.Timer and with counting by hand",
        f"per-prompt median latency within {TARGET:.0%} of torch.utils.benchmark.Timer; output and input "
        "token counts equal to the counts by hand",
        cli.command_line("bench_agreement.py", argv),
        args.quick,
        device,
        method=method_text(__doc__),
    )
    results = []
    for name in cli.models_for(args):
        lm = models.load(name, device)
        results.append(bench_model(lm, settings(name, args)))
        del lm
    report.table(
        f"ftcallback end-to-end latency vs torch.utils.benchmark.Timer, batch_size=1 ({device})",
        [
            "model",
            "prompts",
            "samples per prompt",
            "median ratio ftcallback / Timer",
            "worst prompt",
            "output tokens equal",
            "input tokens equal",
        ],
        [
            [
                r["model"],
                len(r["per_prompt"]),
                r["settings"]["repeats"],
                r["ratio"],
                table.pct(r["worst_deviation"]),
                "yes" if r["output_tokens_equal"] else "NO",
                "yes" if r["input_tokens_equal"] else "NO",
            ]
            for r in results
        ],
    )
    for r in results:
        report.table(
            f"{r['model']}, per prompt",
            [
                "prompt",
                "ftcallback ms",
                "Timer ms",
                "ratio",
                "output tokens ftcallback / by hand",
                "input tokens ftcallback / by hand",
            ],
            [
                [
                    p["prompt"],
                    p["ftcallback_ms"],
                    p["timer_ms"],
                    p["ratio"],
                    f"{'/'.join(map(str, p['ftcallback_output_tokens']))} / {p['hand_output_tokens']}",
                    f"{'/'.join(map(str, p['ftcallback_input_tokens']))} / {p['hand_input_tokens']}",
                ]
                for p in r["per_prompt"]
            ],
        )
    report.results = {"models": results, "target": TARGET}
    ok_latency = all(abs(r["deviation"]) <= TARGET for r in results)
    ok_tokens = all(r["output_tokens_equal"] and r["input_tokens_equal"] for r in results)
    text = ", ".join(
        f"{r['model']} {table.pct(r['deviation'])} (worst prompt {table.pct(r['worst_deviation'])})"
        for r in results
    )
    tokens = "token counts equal" if ok_tokens else "token counts DIFFER"
    report.decide(
        ok_latency and ok_tokens, f"median latency vs Timer {text}; {tokens} (target {TARGET:.0%}, equal)"
    )
    return report.finish(args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
