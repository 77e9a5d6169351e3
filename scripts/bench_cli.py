"""Benchmark 7 - how fast the command line answers: ``ftcallback --help`` against a bare Python start.

Each command runs as a fresh process (``python -m ftcallback ...`` from the repository root, so the
checkout's package is the one imported), N times, the commands interleaved round by round so that a
shared machine's drift hits them alike; the table shows each command's median wall time and its
ratio to ``python -c pass``. One more process runs ``main(["--help"])`` and lists which of torch,
transformers, peft and numpy it imported: the parser must need none of them (they cost seconds).

Target: ``ftcallback --help`` median under 0.5 s.

Run:
    python scripts/bench_cli.py --quick              # 5 runs per command (CI)
    python scripts/bench_cli.py                      # 21 runs per command
    python scripts/bench_cli.py --runs 51 --json out.json
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _bench import cli, stats
from _bench.report import Report, method_text

TARGET_S = 0.5
REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "numpy")

# label -> arguments after the interpreter
COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "ftcallback --help": ["-m", "ftcallback", "--help"],
    "ftcallback measure --help": ["-m", "ftcallback", "measure", "--help"],
    "ftcallback compare --help": ["-m", "ftcallback", "compare", "--help"],
    "ftcallback --version": ["-m", "ftcallback", "--version"],
}


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def _once(args: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def heavy_imports_of_help() -> list[str]:
    """Which of :data:`HEAVY` a fresh process has imported after ``main(["--help"])``."""
    code = (
        "import contextlib, io, sys\n"
        "from ftcallback.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(), check=True, capture_output=True, text=True
    ).stdout.strip()
    return [m for m in out.split(",") if m]


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="processes per command (default 21, quick 5)")
    args = parser.parse_args(argv)
    device = cli.setup(args)
    runs = args.runs or (5 if args.quick else 21)
    report = Report(
        "cli",
        "Command-line start-up: ftcallback --help",
        f"`ftcallback --help` median under {TARGET_S} s, importing neither torch nor transformers",
        cli.command_line("bench_cli.py", argv),
        args.quick,
        device,
        method=method_text(__doc__),
    )
    for args_ in COMMANDS.values():  # one untimed run each: the first start fills the OS file cache
        _once(args_)
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    for _ in range(runs):
        for label, args_ in COMMANDS.items():
            times[label].append(_once(args_))
    bare = stats.median(times["python -c pass"])
    medians = {label: stats.median(values) for label, values in times.items()}
    heavy = heavy_imports_of_help()
    report.table(
        f"Wall time per process, median of {runs} (interleaved)",
        ["command", "median s", "min s", "max s", "x bare Python"],
        [
            [label, medians[label], min(values), max(values), medians[label] / bare]
            for label, values in times.items()
        ],
    )
    report.notes.append(f"modules imported by `main(['--help'])` among {', '.join(HEAVY)}: {heavy or 'none'}")
    help_s = medians["ftcallback --help"]
    report.results = {
        "models": [
            {
                "model": "none",
                "help_s": help_s,
                "bare_s": bare,
                "help_ratio": help_s / bare,
                "median_s": [medians[label] for label in COMMANDS],
            }
        ],
        "commands": list(COMMANDS),
        "runs": runs,
        "times_s": times,
        "heavy_imports": heavy,
        "target_s": TARGET_S,
    }
    light = not ({"torch", "transformers"} & set(heavy))
    report.decide(
        help_s < TARGET_S and light,
        f"ftcallback --help median {help_s:.3f} s ({help_s / bare:.1f}x a bare Python start, {bare:.3f} s); "
        f"imports {', '.join(heavy) or 'no heavy module'} (target < {TARGET_S} s, no torch/transformers)",
    )
    return report.finish(args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
