"""Run every ftcallback benchmark and write BENCHMARKS.md: machine, command, tables, targets met or missed.

Each benchmark runs as its own process (``python scripts/bench_<name>.py ... --json <dir>/<name>.json``,
its output streamed here), then the markdown is built from the JSON results. ``--from-json DIR``
rebuilds the markdown from an earlier run without measuring anything.

The eight benchmarks, in the order of the issues:

1. ``bench_overhead.py``   harness overhead of ``measure()`` over a bare ``generate`` loop (target <= 5%)
2. ``bench_training.py``   share of a Trainer run the callback adds, and its cost model (target < 2%)
3. ``bench_precision.py``  spread of repeated measurements of an unchanged model; repeats/warmup advice
4. ``bench_decisions.py``  false stops (target 0/20) and detection of +10/+25/+50% (target 100% at >= 25%)
5. ``bench_agreement.py``  latency vs ``torch.utils.benchmark.Timer`` (3%) and token counts vs by hand
6. ``bench_scaling.py``    measurement time against prompts, max_new_tokens and batch_size
7. ``bench_cli.py``        ``ftcallback --help`` start-up against a bare Python start (target < 0.5 s)
8. ``bench_drift.py``      decisions on a busy machine: background load, slowdowns, growing answers, cost

Run:
    python scripts/run_benchmarks.py             # full suite -> BENCHMARKS.md (~10 min, quiet 2-core CPU)
    python scripts/run_benchmarks.py --quick     # every --quick mode (~1 min); writes nothing in the repo
    python scripts/run_benchmarks.py --only overhead agreement --models tiny-gpt2 --output /tmp/B.md
    python scripts/run_benchmarks.py --from-json benchmark-results/   # rebuild the markdown only
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _bench.catalog import MODELS

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
BENCHMARKS = ("overhead", "training", "precision", "decisions", "agreement", "scaling", "cli", "drift")
# Benchmarks that load no model: a CUDA pass would only repeat them.
CPU_ONLY = ("cli",)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's --quick mode (what CI runs)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None, help="passed to every benchmark")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=None, help="run these benchmarks only"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CPU, plus a labelled CUDA pass when a GPU is available",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads, passed to every benchmark"
    )
    parser.add_argument(
        "--output", default=None, help="markdown file (default: BENCHMARKS.md; with --quick, in --json-dir)"
    )
    parser.add_argument("--json-dir", dest="json_dir", default=None, help="where the JSON results go")
    parser.add_argument(
        "--from-json", dest="from_json", default=None, metavar="DIR", help="only rebuild the markdown"
    )
    return parser.parse_args(argv)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def run_all(args: argparse.Namespace, json_dir: Path) -> list[dict[str, Any]]:
    """Run the benchmarks, one process each; return one entry per (benchmark, device)."""
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "auto" and _cuda_available():
        devices.append("cuda")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    runs = []
    for device in devices:
        for name in args.only or BENCHMARKS:
            if device != "cpu" and name in CPU_ONLY:
                continue
            out = json_dir / f"{name}{'' if device == 'cpu' else '-' + device}.json"
            flags = ["--quick"] if args.quick else []
            if args.models:
                flags += ["--models", *args.models]
            if device != "cpu":
                flags += ["--device", device]
            if args.threads is not None:
                flags += ["--threads", str(args.threads)]
            cmd = [sys.executable, str(SCRIPTS_DIR / f"bench_{name}.py"), *flags, "--json", str(out)]
            print(f"\n>>> python scripts/bench_{name}.py {' '.join(map(shlex.quote, flags))}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False)
            runs.append(
                {
                    "name": name,
                    "device": device,
                    "json": out,
                    "returncode": proc.returncode,
                    "wall_s": time.perf_counter() - start,
                    "flags": flags,
                }
            )
    return runs


def _busy_load(machine: dict[str, Any]) -> float:
    """Load above which something else shared the CPU: the benchmark's own threads keep the load near
    their count, so only load beyond them (plus half a core of slack) is someone else's."""
    return float(machine.get("torch_threads") or machine.get("cpu_cores_usable") or 1) + 0.5


def load_results(json_dir: Path) -> list[dict[str, Any]]:
    runs = []
    for name in BENCHMARKS:
        for path in sorted(json_dir.glob(f"{name}*.json")):
            stem = path.stem
            if stem != name and not stem.startswith(f"{name}-cuda"):
                continue  # not a file run_all writes
            device = "cpu" if stem == name else stem[len(name) + 1 :]
            runs.append({"name": name, "device": device, "json": path, "returncode": 0, "wall_s": math.nan})
    return runs


def render(runs: list[dict[str, Any]], *, quick: bool, invocation: str, total_s: float) -> str:
    results = []
    for run in runs:
        data = None
        if run["json"].exists():
            data = json.loads(run["json"].read_text(encoding="utf-8"))
        results.append((run, data))
    machine = next((d["machine"] for _, d in results if d and d["machine"].get("device") == "cpu"), None)
    machine = machine or next((d["machine"] for _, d in results if d), None)
    lines = ["# ftcallback benchmarks", ""]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    took = f" in {total_s / 60:.1f} min" if math.isfinite(total_s) else ""
    lines.append(f"Generated by `{invocation}` on {stamp}{took}.")
    if quick:
        lines += [
            "",
            "> **Quick mode**: smoke-test settings (tiny model, few prompts and repeats). These numbers "
            "only show that the benchmarks run; do not publish them.",
        ]
    lines += [
        "",
        "Each benchmark states a ratio or a rate taken within one run, its conditions interleaved, so "
        "that a shared machine's drift does not decide it. Every command below reproduces its section; "
        "add `--json OUT` for the raw numbers and `--quick` for the seconds-long version CI runs.",
    ]
    if machine:
        lines += ["", "## Machine", "", "| | |", "|---|---|"]
        rows = [
            ("CPU", machine.get("cpu")),
            ("cores (usable)", f"{machine.get('cpu_cores')} ({machine.get('cpu_cores_usable')})"),
            ("memory", f"{machine.get('memory_gib')} GiB"),
            ("torch threads", machine.get("torch_threads")),
            ("OS", machine.get("platform")),
            ("Python", machine.get("python")),
            (
                "torch / transformers / numpy",
                f"{machine.get('torch')} / {machine.get('transformers')} / {machine.get('numpy')}",
            ),
            ("ftcallback", machine.get("ftcallback")),
        ]
        lines += [f"| {k} | {v} |" for k, v in rows]
        gpus = {d["machine"].get("gpu") for _, d in results if d and d["machine"].get("gpu")}
        lines += [
            "| GPU | "
            + (
                ", ".join(sorted(gpus)) + " (figures in the sections marked GPU)"
                if gpus
                else "none: **GPU figures not measured** (the scripts support `--device cuda`, with "
                "CUDA-synchronised timing and peak memory)"
            )
            + " |"
        ]
        loads = [(r["name"], d["machine"].get("load_average_1m")) for r, d in results if d]
        busy = [
            n
            for n, load in loads
            if isinstance(load, (int, float)) and load > _busy_load(machine)
        ]
        lines += [
            "",
            "1-minute load average when each benchmark ended: "
            + ", ".join(f"{n} {load}" for n, load in loads)
            + ".",
        ]
        if busy:
            lines += [
                "",
                f"> **The machine was busy** during {', '.join(busy)} (load above the benchmark's own threads + 0.5): "
                "other processes shared the CPU, so timings there are noisier than on a quiet machine.",
            ]

    lines += ["", "## Summary", "", "| # | benchmark | device | target | result |", "|---|---|---|---|---|"]
    for run, data in results:
        label = BENCHMARKS.index(run["name"]) + 1
        if data is None:
            lines.append(
                f"| {label} | {run['name']} | {run['device']} | - | "
                f"**FAILED** (exit code {run['returncode']}) |"
            )
            continue
        verdict = data["verdict"].replace("|", "/")
        head, _, rest = verdict.partition(":")
        lines.append(
            f"| {label} | {data['title']} | {run['device']} | {data['target']} | **{head}**:{rest} |"
        )

    for run, data in results:
        label = BENCHMARKS.index(run["name"]) + 1
        gpu = " - GPU" if run["device"] != "cpu" else ""
        if data is None:
            lines += [
                "",
                f"## {label}. {run['name']}{gpu}",
                "",
                f"The benchmark failed (exit code {run['returncode']}); run its command to see why.",
            ]
            continue
        lines += ["", f"## {label}. {data['title']}{gpu}", ""]
        lines += [f"Reproduce: `{data['command']}`", ""]
        if data.get("method"):
            lines += [data["method"], ""]
        lines += [f"Target: {data['target']}", ""]
        for table in data["tables"]:
            lines += [f"**{table['title']}**", "", table["markdown"], ""]
        for note in data["notes"]:
            lines.append(f"- {note}")
        if data["notes"]:
            lines.append("")
        head, _, rest = data["verdict"].partition(":")
        lines.append(f"**{head}**:{rest}")
        if data["passed"] is False:
            lines += ["", "Shortfall: " + _shortfall(data)]
        m = data["machine"]
        lines += [
            "",
            f"<sub>{m.get('device')}, torch threads {m.get('torch_threads')}, load average "
            f"{m.get('load_average_1m')}, took {data['duration_s']:.0f} s</sub>",
        ]
    return "\n".join(lines).rstrip() + "\n"


def _shortfall(data: Mapping[str, Any]) -> str:
    """The standard explanation of a missed target; the benchmark's notes carry the specifics."""
    m = data["machine"]
    load, cores = m.get("load_average_1m"), m.get("cpu_cores_usable") or 1
    if data.get("quick"):
        return "quick mode runs too few repeats to judge the target; run the command without --quick."
    if isinstance(load, (int, float)) and load > _busy_load(m):
        return (
            f"the machine was busy (load average {load} on {cores} cores); re-run the command on a quiet "
            "machine before attributing the miss to ftcallback."
        )
    return "see the table and the notes above for where the time or the error comes from."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = "python scripts/run_benchmarks.py" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)
    )
    start = time.perf_counter()
    if args.from_json:
        json_dir = Path(args.from_json)
        runs = load_results(json_dir)
        if not runs:
            print(f"no benchmark results in {json_dir}", file=sys.stderr)
            return 2
        quick = any(json.loads(r["json"].read_text(encoding="utf-8")).get("quick") for r in runs)
    else:
        json_dir = Path(args.json_dir or tempfile.mkdtemp(prefix="ftcallback-bench-"))
        json_dir.mkdir(parents=True, exist_ok=True)
        runs = run_all(args, json_dir)
        quick = args.quick
    total = time.perf_counter() - start if not args.from_json else math.nan
    if args.output:
        output = Path(args.output)
    elif quick:
        output = json_dir / "BENCHMARKS.md"
    else:
        output = REPO_ROOT / "BENCHMARKS.md"
    output.write_text(render(runs, quick=quick, invocation=invocation, total_s=total), encoding="utf-8")
    failed = [r["name"] for r in runs if r["returncode"] != 0]
    print(f"\nwrote {output} (raw results in {json_dir}){'; FAILED: ' + ', '.join(failed) if failed else ''}")
    if math.isfinite(total):
        print(f"total {total / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
