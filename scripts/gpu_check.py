"""GPU check: every CUDA path of ftcallback exercised in one command, figures written to a file.

What it checks, on one CUDA device:

1. **Synchronised timing.** ``measure`` syncs the device before each clock read. Every ``generate`` call
   it makes is also bracketed by CUDA events (a wrapper on ``model.generate``); with every response
   forced to ``max_new_tokens`` a request's latency is the whole call, so the two clocks must agree
   (the median call within 1 ms + 5%; the count of calls within is reported too).
2. **Peak memory.** ``Measurement.peak_memory_bytes`` is set, at least the weights' size, and equals
   ``torch.cuda.max_memory_allocated`` after the call (``measure`` resets the peak first).
3. **bf16 autocast.** ``measure`` under ``torch.autocast("cuda", torch.bfloat16)`` runs and records
   ``environment["autocast"]`` as enabled, bfloat16; latency next to fp32.
4. **RNG restore.** After a sampling ``measure`` the CUDA (and CPU) RNG states are what they were.
5. **Non-disturbance.** Three training steps of a GPT-2 with dropout on the GPU give bit-identical
   losses and weights with a sampling ``measure`` after the first step and without (a control pair
   without any measure shows the steps are deterministic in the first place).

Exit code: 0 all checks passed, 1 a check failed, 77 no CUDA device (nothing checked, nothing written).
``--dry-run`` runs the same checks on the CPU with a tiny model (perf_counter stands in for CUDA events;
peak memory is expected to be absent) so the script itself is tested where there is no GPU; its figures
say ``device: cpu`` and are no GPU figures.

Run:
    python scripts/gpu_check.py --out results/gpu_check          # writes gpu_check.json and gpu_check.md
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check    # CPU, tiny model, seconds
"""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the training check

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _bench import catalog, cli, machine, models, table  # noqa: E402

from ftcallback import NoisyMeasurementWarning, measure  # noqa: E402
from ftcallback._json import jsonable, write_json_atomic  # noqa: E402

EXIT_SKIPPED = 77
_TIMING_ABS_MS, _TIMING_REL = 1.0, 0.05


class _GenerateClock:
    """Brackets every ``model.generate`` call with CUDA events (or perf_counter on the CPU)."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model, self.device = model, device
        self.pairs: list[Any] = []
        self._original = model.generate

    def __enter__(self) -> _GenerateClock:
        original, cuda = self._original, self.device.type == "cuda"

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = original(*args, **kwargs)
                end.record()
                self.pairs.append((start, end))
            else:
                t0 = time.perf_counter()
                out = original(*args, **kwargs)
                self.pairs.append((t0, time.perf_counter()))
            return out

        self.model.generate = timed_generate
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.generate  # the instance attribute: the class method shows through again

    def elapsed_ms(self) -> list[float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return [float(s.elapsed_time(e)) for s, e in self.pairs]
        return [(e - s) * 1000.0 for s, e in self.pairs]


def check_timing(lm: models.LoadedModel, n_prompts: int, max_new_tokens: int) -> dict[str, Any]:
    warmup, repeats = 1, 3
    with _GenerateClock(lm.model, lm.device) as clock:
        m = measure(
            lm.model,
            lm.tokenizer,
            lm.probe(n_prompts),
            max_new_tokens=max_new_tokens,
            generation_kwargs={"min_new_tokens": max_new_tokens},
            warmup=warmup,
            repeats=repeats,
            apply_chat_template=lm.chat,
        )
    events = clock.elapsed_ms()[warmup:]
    ours = [s.latency_s * 1000.0 for s in m.samples]  # batch_size 1: one sample per call, in call order
    diffs = [o - e for o, e in zip(ours, events, strict=True)]
    within = [abs(d) <= _TIMING_ABS_MS + _TIMING_REL * e for d, e in zip(diffs, events, strict=True)]
    # The median call decides: one call preempted between the two clocks on a busy host is not a timing bug.
    typical = statistics.median(abs(d) for d in diffs) <= _TIMING_ABS_MS + _TIMING_REL * statistics.median(events)
    return {
        "passed": typical and all(s.ttft_s <= s.latency_s for s in m.samples),
        "calls": len(events),
        "calls_within_tolerance": sum(within),
        "measure_latency_ms_p50": statistics.median(ours),
        "event_latency_ms_p50": statistics.median(events),
        "diff_ms_median": statistics.median(diffs),
        "diff_ms_max_abs": max(abs(d) for d in diffs),
        "rel_diff_max": max(abs(d) / e for d, e in zip(diffs, events, strict=True) if e > 0),
        "ttft_ms_p50": m.ttft_ms.p50,
        "tpot_ms_p50": m.tpot_ms.p50,
        "tolerance": f"median |diff| <= {_TIMING_ABS_MS} ms + {_TIMING_REL:.0%}",
    }


def check_peak_memory(lm: models.LoadedModel, n_prompts: int, max_new_tokens: int) -> dict[str, Any]:
    m = measure(lm.model, lm.tokenizer, lm.probe(n_prompts), max_new_tokens=max_new_tokens, repeats=1)
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    if lm.device.type != "cuda":
        return {"passed": m.peak_memory_bytes is None, "peak_memory_bytes": m.peak_memory_bytes, "note": "CPU: none"}
    allocated = int(torch.cuda.max_memory_allocated(lm.device))
    peak = m.peak_memory_bytes
    return {
        "passed": peak is not None and peak >= weights and peak == allocated,
        "peak_memory_mb": None if peak is None else peak / 2**20,
        "weights_mb": weights / 2**20,
        "max_memory_allocated_mb": allocated / 2**20,
    }


def check_autocast(lm: models.LoadedModel, n_prompts: int, max_new_tokens: int) -> dict[str, Any]:
    def run() -> Any:
        return measure(
            lm.model,
            lm.tokenizer,
            lm.probe(n_prompts),
            max_new_tokens=max_new_tokens,
            repeats=2,
            apply_chat_template=lm.chat,
        )

    fp32 = run()
    with torch.autocast(lm.device.type, dtype=torch.bfloat16):
        bf16 = run()
    autocast = bf16.environment.get("autocast") or {}
    return {
        "passed": autocast.get("enabled") is True and autocast.get("dtype") == "bfloat16",
        "autocast_dtype": autocast.get("dtype"),
        "fp32_latency_ms_p50": fp32.latency_ms.p50,
        "bf16_latency_ms_p50": bf16.latency_ms.p50,
        "fp32_output_tokens_mean": fp32.output_tokens.mean,
        "bf16_output_tokens_mean": bf16.output_tokens.mean,
    }


def check_rng(lm: models.LoadedModel, n_prompts: int, max_new_tokens: int) -> dict[str, Any]:
    cuda = lm.device.type == "cuda"
    torch.manual_seed(1234)  # initialises the CUDA generators too, so there is state to disturb
    cpu_before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state_all() if cuda else []
    measure(
        lm.model,
        lm.tokenizer,
        lm.probe(n_prompts),
        max_new_tokens=max_new_tokens,
        generation_kwargs={"do_sample": True},
        repeats=1,
        seed=7,
    )
    cpu_same = torch.equal(cpu_before, torch.get_rng_state())
    cuda_after = torch.cuda.get_rng_state_all() if cuda else []
    cuda_same = len(cuda_before) == len(cuda_after) and all(
        torch.equal(a, b) for a, b in zip(cuda_before, cuda_after, strict=True)
    )
    return {"passed": cpu_same and cuda_same, "cpu_rng_restored": cpu_same, "cuda_rng_restored": cuda_same}


def _train(
    base: Any, tokenizer: Any, device: torch.device, probe: Callable[[Any], None] | None
) -> tuple[list[float], float]:
    model = copy.deepcopy(base).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = tokenizer(list(catalog.TINY_PROMPTS[:4]), return_tensors="pt", padding=True).to(device)
    torch.manual_seed(0)
    losses = []
    for step in range(3):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.input_ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out.loss.detach()))
        if step == 0 and probe is not None:
            probe(model)
    checksum = float(sum(p.detach().double().sum().item() for p in model.parameters()))
    return losses, checksum


def check_training(device: torch.device) -> dict[str, Any]:
    from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    base = tiny_causal_lm("gpt2", positions=catalog.TINY_POSITIONS)  # GPT-2 config: dropout 0.1, RNG matters

    def probe(model: Any) -> None:
        measure(
            model,
            tokenizer,
            list(catalog.TINY_PROMPTS[:2]),
            max_new_tokens=8,
            generation_kwargs={"do_sample": True},
            repeats=1,
        )

    control_a = _train(base, tokenizer, device, None)
    control_b = _train(base, tokenizer, device, None)
    with_measure = _train(base, tokenizer, device, probe)
    deterministic = control_a == control_b
    return {
        "passed": deterministic and with_measure == control_a,
        "steps_deterministic": deterministic,
        "losses_without": control_a[0],
        "losses_with_measure": with_measure[0],
        "weights_checksum_equal": with_measure[1] == control_a[1],
    }


def write(out: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    stem = out.with_suffix("") if out.suffix in (".json", ".md") else out
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    write_json_atomic(json_path, jsonable(result))
    rows = []
    for name, check in result["checks"].items():
        figures = "; ".join(
            f"{k} {table.fmt(v) if isinstance(v, float) else v}" for k, v in check.items() if k != "passed"
        )
        rows.append([name, "PASS" if check["passed"] else "FAIL", figures])
    lines = [
        f"# ftcallback GPU check{' (dry run on CPU: no GPU figures)' if result['dry_run'] else ''}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {machine.machine_line(result['machine'])}",
        "",
        f"Model: {result['model']}; wall time {result['wall_s']:.1f} s",
        "",
        table.md_table(["check", "result", "figures"], rows),
        "",
    ]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="output stem: writes OUT.json and OUT.md")
    parser.add_argument("--dry-run", action="store_true", help="run the checks on the CPU with a tiny model")
    parser.add_argument(
        "--model", choices=catalog.MODELS, default=None, help="default: smollm2 (tiny-gpt2 in a dry run)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 (8 in a dry run)")
    parser.add_argument("--prompts", type=int, default=4, help="probe prompts per check (default: 4)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: nothing checked (exit 77, skipped); use --dry-run to run the checks on the CPU")
        return EXIT_SKIPPED
    # Timing noise is not what is checked here; the figures say how noisy the machine was.
    warnings.filterwarnings("ignore", category=NoisyMeasurementWarning)
    torch.set_num_threads(1 if args.dry_run else torch.get_num_threads())
    device = torch.device("cpu" if args.dry_run else "cuda")
    name = args.model or ("tiny-gpt2" if args.dry_run else "smollm2")
    max_new_tokens = args.max_new_tokens or (8 if args.dry_run else 32)
    start = time.perf_counter()
    lm = models.load(name, device)
    checks: dict[str, dict[str, Any]] = {}
    for check_name, fn in (
        ("synchronised_timing", lambda: check_timing(lm, args.prompts, max_new_tokens)),
        ("peak_memory", lambda: check_peak_memory(lm, args.prompts, max_new_tokens)),
        ("bf16_autocast", lambda: check_autocast(lm, args.prompts, max_new_tokens)),
        ("rng_restored", lambda: check_rng(lm, args.prompts, max_new_tokens)),
        ("training_undisturbed", lambda: check_training(device)),
    ):
        t0 = time.perf_counter()
        try:
            checks[check_name] = fn()
        except Exception as exc:  # a crash is a failed check with its reason, and the others still run
            checks[check_name] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
        checks[check_name]["seconds"] = time.perf_counter() - t0
        print(f"{check_name}: {'PASS' if checks[check_name]['passed'] else 'FAIL'}", flush=True)
    result = {
        "dry_run": bool(args.dry_run),
        "command": cli.command_line("gpu_check.py", argv),
        "machine": machine.machine_info(device),
        "model": name,
        "max_new_tokens": max_new_tokens,
        "wall_s": time.perf_counter() - start,
        "checks": checks,
        "passed": all(c["passed"] for c in checks.values()),
    }
    json_path, md_path = write(args.out, result)
    print(f"wrote {json_path} and {md_path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
