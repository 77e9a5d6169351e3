"""Benchmark 4 - decision quality: no false stops on an unchanged model, every real slowdown caught.

Each run is a baseline measurement and a later measurement of the same model and probe with the
callback's defaults (8 prompts, warmup=1, repeats=3, batch_size=1) and a fixed output length
(``min_new_tokens = max_new_tokens``, so only speed can change), judged by
``evaluate(Budget(max_latency_increase=0.2), later, baseline)`` with patience 1 (a breach is a stop).
The later measurement is of the unchanged model or of the model with an injected proportional
slowdown of 10%, 25% or 50%: a forward pre-hook and forward hook on the model busy-wait (perf_counter;
time.sleep is too coarse for sub-millisecond forwards) a fixed multiple of each forward pass's own
time. The multiple is the slowdown divided by the share of a ``generate`` call spent in forward passes
(calibrated first), so that end-to-end latency grows by the nominal fraction; the realised ratio is
reported. Conditions are interleaved within every run, their order rotating.

A handful of runs then go through the real ``EfficiencyCallback`` in a ``Trainer`` (learning_rate=0,
so the weights stay as they were; the slowdown, where there is one, switched on after the first step)
to show the callback path decides the same.

Target: false-stop rate 0 over >= 20 unchanged runs; detection 100% at +25% and +50% (+10% is below
the 20% budget: a stop there would be a false alarm too, reported for information).

Run:
    python scripts/bench_decisions.py --quick                # seconds, tiny-gpt2, 1 run (CI)
    python scripts/bench_decisions.py                        # tiny-gpt2, 20 runs per condition
    python scripts/bench_decisions.py --models smollm2 --runs 5 --max-new-tokens 8 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from _bench import cli, models, stats, table, timing  # before transformers: sets HF_HUB_OFFLINE
from _bench.report import Report, method_text

from ftcallback import Budget, EfficiencyCallback, evaluate, measure

BUDGET = Budget(max_latency_increase=0.2)
SLOWDOWNS = (0.0, 0.10, 0.25, 0.50)
MIN_RUNS = 20


class SlowDown:
    """Forward hooks that busy-wait ``factor`` x each eval-mode forward pass's own duration.

    The pre-hook notes when a forward starts, the hook measures how long it took and spins for
    ``factor`` times that, so a forward that is slower for any reason is slowed proportionally.

    With ``factor=0`` they only add up the time spent in forward passes (for calibration).
    """

    def __init__(
        self, model: torch.nn.Module, factor: float = 0.0, device: torch.device | None = None
    ) -> None:
        self.factor = factor
        self.forward_s = 0.0
        self._device = device or torch.device("cpu")
        self._start = 0.0
        self._debt = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._pre),
            model.register_forward_hook(self._post),
        ]

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        timing.synchronize(self._device)
        self._start = time.perf_counter()

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        timing.synchronize(self._device)
        elapsed = time.perf_counter() - self._start
        self.forward_s += elapsed
        if self.factor > 0 and not module.training:
            # Owed time carries over: a wait that overshot (the process was descheduled while spinning)
            # is paid back by the next ones, so the total added stays factor x forward time.
            self._debt += self.factor * elapsed
            if self._debt > 0:
                start = time.perf_counter()
                timing.busy_wait(self._debt)
                self._debt -= time.perf_counter() - start

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextlib.contextmanager
def slowed(lm: models.LoadedModel, factor: float) -> Iterator[SlowDown | None]:
    if factor <= 0:
        yield None
        return
    hooks = SlowDown(lm.model, factor, lm.device)
    try:
        yield hooks
    finally:
        hooks.remove()


def settings(name: str, args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        cfg = {"runs": 1, "prompts": 8, "max_new_tokens": 8, "trainer_runs": 1}
    elif name == "smollm2":
        cfg = {"runs": MIN_RUNS, "prompts": 8, "max_new_tokens": 8, "trainer_runs": 1}
    else:
        cfg = {"runs": MIN_RUNS, "prompts": 8, "max_new_tokens": 16, "trainer_runs": 3}
    for key in cfg:
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    return cfg


def probe_measure(lm: models.LoadedModel, prompts: list[str], T: int) -> Any:
    # The callback's defaults: warmup=1, repeats=3, batch_size=1.
    return measure(
        lm.model,
        lm.tokenizer,
        prompts,
        max_new_tokens=T,
        generation_kwargs={"min_new_tokens": T},
        apply_chat_template=lm.chat,
    )


def forward_share(lm: models.LoadedModel, prompts: list[str], T: int) -> float:
    """Fraction of the timed requests' latency spent inside the model's forward passes."""
    shares = []
    for _ in range(2):
        hooks = SlowDown(lm.model, 0.0, lm.device)
        try:
            m = probe_measure(lm, prompts, T)
        finally:
            hooks.remove()
        total = sum(s.latency_s for s in m.samples) + sum(m.warmup_latencies_s)
        shares.append(hooks.forward_s / total)
    return min(1.0, stats.median(shares))


def direct_runs(lm: models.LoadedModel, cfg: dict[str, int], share: float) -> list[dict[str, Any]]:
    prompts = lm.probe(cfg["prompts"])
    T = cfg["max_new_tokens"]
    out = []
    for run in range(cfg["runs"]):
        k = run % len(SLOWDOWNS)
        for slowdown in SLOWDOWNS[k:] + SLOWDOWNS[:k]:
            baseline = probe_measure(lm, prompts, T)
            with slowed(lm, slowdown / share):
                later = probe_measure(lm, prompts, T)
            check = evaluate(BUDGET, later, baseline).checks[0]
            out.append(
                {
                    "run": run,
                    "slowdown": slowdown,
                    "ratio": check.ratio,
                    "low": check.interval[0] if check.interval else math.nan,
                    "high": check.interval[1] if check.interval else math.nan,
                    "stopped": bool(check.breached),
                    "noise_cv": max(baseline.noise_cv, later.noise_cv),
                }
            )
    return out


def trainer_run(lm: models.LoadedModel, cfg: dict[str, int], slowdown: float, share: float) -> dict[str, Any]:
    """One Trainer run, lr=0, the slowdown switched on after the first optimizer step."""
    from transformers import (
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    prompts = lm.probe(cfg["prompts"])
    T = cfg["max_new_tokens"]
    batch = models.left_padded_batches(lm, prompts[:4], 4)[0]
    data = [
        {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        for ids, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu(), strict=True)
    ]
    holder: dict[str, SlowDown] = {}

    class SwitchOn(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            if slowdown > 0 and "hooks" not in holder:
                holder["hooks"] = SlowDown(lm.model, slowdown / share, lm.device)

    cb = EfficiencyCallback(
        prompts,
        budget=BUDGET,
        max_new_tokens=T,
        generation_kwargs={"min_new_tokens": T},
        apply_chat_template=lm.chat,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="ftc-bench-decisions-") as out:
            args = TrainingArguments(
                output_dir=out,
                num_train_epochs=1,
                per_device_train_batch_size=2,
                learning_rate=0.0,
                report_to="none",
                save_strategy="no",
                disable_tqdm=True,
                use_cpu=lm.device.type == "cpu",
                seed=0,
            )
            trainer = Trainer(
                model=lm.model,
                args=args,
                train_dataset=data,
                processing_class=lm.tokenizer,
                data_collator=default_data_collator,
                callbacks=[SwitchOn(), cb],
            )
            trainer.remove_callback(PrinterCallback)
            trainer.train()
    finally:
        if "hooks" in holder:
            holder["hooks"].remove()
        lm.model.eval()
    assert cb.report is not None
    last = cb.report.checks[-1]
    return {
        "slowdown": slowdown,
        "checks": len(cb.report.checks),
        "ratio": last.ratios.get("latency_ratio", math.nan),
        "stopped": cb.report.stopped is not None,
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for slowdown in SLOWDOWNS:
        sel = [r for r in runs if r["slowdown"] == slowdown]
        if not sel:
            continue
        ratios = [r["ratio"] for r in sel]
        rows.append(
            {
                "slowdown": slowdown,
                "runs": len(sel),
                "stops": sum(r["stopped"] for r in sel),
                "rate": sum(r["stopped"] for r in sel) / len(sel),
                "ratio_median": stats.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=None, help=f"runs per condition (>= {MIN_RUNS} in full mode)"
    )
    parser.add_argument("--prompts", type=int, default=None, help="probe size (8)")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=None)
    parser.add_argument(
        "--trainer-runs", dest="trainer_runs", type=int, default=None, help="Trainer runs per condition"
    )
    args = parser.parse_args(argv)
    device = cli.setup(args)
    report = Report(
        "decisions",
        "Decision quality",
        f"max_latency_increase=0.2, patience 1: false-stop rate 0 over >= {MIN_RUNS} unchanged runs; "
        "detection 100% for +25% and +50% slowdowns",
        cli.command_line("bench_decisions.py", argv),
        args.quick,
        device,
        method=method_text(__doc__),
    )
    results: list[dict[str, Any]] = []
    for name in cli.models_for(args, ("tiny-gpt2",)):
        lm = models.load(name, device)
        cfg = settings(name, args)
        prompts = lm.probe(cfg["prompts"])
        probe_measure(lm, prompts, cfg["max_new_tokens"])  # warm-up, untimed
        share = forward_share(lm, prompts, cfg["max_new_tokens"])
        runs = direct_runs(lm, cfg, share)
        trainer = [
            trainer_run(lm, cfg, slowdown, share)
            for _ in range(cfg["trainer_runs"])
            for slowdown in (0.0, 0.25, 0.5)
        ]
        results.append(
            {
                "model": lm.name,
                "settings": cfg,
                "forward_share": share,
                "runs": runs,
                "summary": summarize(runs),
                "trainer_runs": trainer,
                "trainer_summary": summarize(trainer),
            }
        )
        del lm
    for r in results:
        cfg = r["settings"]
        rows = [
            [
                "direct (evaluate)",
                f"{s['slowdown']:+.0%}",
                s["runs"],
                s["stops"],
                table.pct(s["rate"], 0, signed=False),
                s["ratio_median"],
                f"{s['ratio_min']:.3f} .. {s['ratio_max']:.3f}",
            ]
            for s in r["summary"]
        ] + [
            [
                "EfficiencyCallback in Trainer",
                f"{s['slowdown']:+.0%}",
                s["runs"],
                s["stops"],
                table.pct(s["rate"], 0, signed=False),
                s["ratio_median"],
                f"{s['ratio_min']:.3f} .. {s['ratio_max']:.3f}",
            ]
            for s in r["trainer_summary"]
        ]
        report.table(
            f"{r['model']}: {cfg['prompts']} prompts x {cfg['max_new_tokens']} tokens, warmup=1, "
            "repeats=3, budget max_latency_increase=0.2, patience 1 "
            f"(forward passes: {r['forward_share']:.0%} of latency)",
            [
                "path",
                "injected slowdown",
                "runs",
                "stops",
                "stop rate",
                "median measured ratio",
                "ratio range",
            ],
            rows,
        )
    report.results = {"models": results, "budget": BUDGET.to_dict(), "patience": 1}
    problems = []
    for r in results:
        for label, summary in (("direct", r["summary"]), ("Trainer", r["trainer_summary"])):
            for s in summary:
                if s["slowdown"] == 0.0 and s["stops"]:
                    problems.append(f"{r['model']} {label}: {s['stops']}/{s['runs']} false stops")
                if s["slowdown"] >= 0.25 and s["stops"] < s["runs"]:
                    missed = s["runs"] - s["stops"]
                    problems.append(
                        f"{r['model']} {label}: {missed}/{s['runs']} missed at {s['slowdown']:+.0%}"
                    )
    few = [r["model"] for r in results if r["settings"]["runs"] < MIN_RUNS]
    texts = []
    for r in results:
        by = {s["slowdown"]: s for s in r["summary"]}
        texts.append(
            f"{r['model']}: false stops {by[0.0]['stops']}/{by[0.0]['runs']}, detected "
            + ", ".join(f"{sd:+.0%} {by[sd]['stops']}/{by[sd]['runs']}" for sd in SLOWDOWNS[1:])
        )
    suffix = f" (only {r['settings']['runs']} runs per condition: --quick)" if few else ""
    if problems:
        report.decide(False, "; ".join(texts) + "; " + "; ".join(problems) + suffix)
    else:
        report.decide(True, "; ".join(texts) + suffix)
    return report.finish(args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
