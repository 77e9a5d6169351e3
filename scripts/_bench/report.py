"""What one benchmark found: printed as markdown and written as JSON for run_benchmarks.py."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from _bench.machine import machine_info, machine_line
from _bench.table import md_table
from ftcallback._json import jsonable, write_json_atomic


def method_text(doc: str | None) -> str:
    """A benchmark's docstring without its title line and its ``Run:`` section: how it measures."""
    if not doc:
        return ""
    paragraphs = doc.split("\nRun:", 1)[0].strip().split("\n\n")[1:]
    return "\n\n".join(p for p in paragraphs if not p.lstrip().startswith("Target")).strip()


@dataclass
class Report:
    """What one benchmark found: printed as markdown and written as JSON for run_benchmarks.py."""

    benchmark: str
    title: str
    target: str
    command: str
    quick: bool
    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    tables: list[dict[str, str]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    passed: bool | None = None
    verdict: str = ""
    method: str = ""

    def table(self, title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.tables.append({"title": title, "markdown": md_table(headers, rows)})

    def decide(self, passed: bool | None, text: str) -> None:
        self.passed = passed
        label = "INFO" if passed is None else ("PASS" if passed else "MISS")
        self.verdict = f"{label}: {text}"

    def finish(self, json_out: str | None) -> int:
        """Print the tables and the verdict line; write the JSON; exit code 0 (a MISS is a finding)."""
        machine = machine_info(self.device)
        duration = time.perf_counter() - self.started
        print(f"## {self.title}{' (quick)' if self.quick else ''}\n")
        print(f"Machine: {machine_line(machine)}")
        print(f"Command: `{self.command}`\n")
        print(f"Target: {self.target}\n")
        for t in self.tables:
            print(f"{t['title']}\n\n{t['markdown']}\n")
        for note in self.notes:
            print(f"- {note}")
        if self.notes:
            print()
        print(self.verdict)
        print(f"(took {duration:.1f} s)")
        if json_out:
            data = {
                "benchmark": self.benchmark,
                "title": self.title,
                "target": self.target,
                "method": self.method,
                "command": self.command,
                "quick": self.quick,
                "passed": self.passed,
                "verdict": self.verdict,
                "machine": machine,
                "duration_s": duration,
                "tables": self.tables,
                "notes": self.notes,
                "results": self.results,
            }
            # ftcallback's one JSON encoding: NaN -> null, infinities -> "inf", tensors -> lists.
            write_json_atomic(Path(json_out), jsonable(data))
        return 0
