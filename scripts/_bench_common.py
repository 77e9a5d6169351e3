"""Shared plumbing for the ``scripts/bench_*.py`` benchmarks.

What lives here: the command-line flags every benchmark shares (``--quick``, ``--models``,
``--device``, ``--threads``, ``--json``), loading the benchmark models (two tiny random models and the
embedded SmolLM2-135M-Instruct), building the exact inputs a bare ``generate`` loop needs (encoded
independently of ftcallback, left-padded by hand), device-synchronised timing, a description of the
machine, markdown tables, and the JSON result every benchmark writes.

Every benchmark prints its tables and one line ``PASS: ...`` / ``MISS: ...`` (``INFO: ...`` when the
issue sets no target) and, with ``--json OUT``, writes the raw numbers plus everything
``scripts/run_benchmarks.py`` needs to build ``BENCHMARKS.md``.
"""

from __future__ import annotations

import os

# Before transformers is imported anywhere: a hub lookup without network hangs ~48 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar

import argparse
import json
import logging
import math
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MODELS = ("tiny-gpt2", "tiny-llama", "smollm2")
TINY_MODELS = ("tiny-gpt2", "tiny-llama")
SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent

#: Probe prompts for the tiny models: the vocabulary their tokenizer was trained on.
TINY_PROMPTS = [
    "the model returns a short reply.",
    "a user measures the latency",
    "the server generates ten tokens",
    "this request stops the budget and explains its cost to a user",
    "the answer predicts a long answer.",
    "a token repeats the budget",
    "the batch explains the latency to the server",
    "the model measures its cost.",
    "a user generates a short reply and the server returns it",
    "the server stops",
    "this request repeats ten tokens.",
    "the answer explains the budget to a user",
    "a token predicts the latency of the batch",
    "the batch returns a long answer",
    "the model stops the request",
    "a user explains its cost",
]

#: Probe prompts for SmolLM2-135M-Instruct (the first eight are examples/data/probe_prompts.txt).
SMOL_PROMPTS = [
    "What is the capital of Germany?",
    "What is the capital of Japan?",
    "How many days are in a week?",
    "What is 2 plus 2?",
    "What is the capital of Canada?",
    "How many hours are in a day?",
    "Which ocean is the largest?",
    "What is the boiling point of water in Celsius?",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
    "What is the capital of Italy?",
    "Name the largest planet in the solar system.",
    "What is the freezing point of water in Celsius?",
    "How many continents are there?",
    "What is the capital of Spain?",
    "Which animal is known as the king of the jungle?",
]

#: Context length given to the tiny models, so that the callback's default max_new_tokens=128 fits.
TINY_POSITIONS = 512


# --------------------------------------------------------------------------- command line
def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark accepts."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds, tiny model, few prompts/repeats (what CI runs)"
    )
    parser.add_argument(
        "--models",
        "--model",
        dest="models",
        nargs="+",
        choices=MODELS,
        default=None,
        help="models to benchmark (default: tiny-gpt2 with --quick, else the benchmark's full set)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (CUDA-synchronised timing)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice; 1 with --quick, whose tiny models gain nothing "
        "from more and slow down sharply on a busy machine)",
    )
    parser.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write raw results here")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``/``--seed``, silence library chatter, and return the device to run on."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif args.quick:
        # A 150k-parameter model gains nothing from intra-op threads, and on a shared machine their
        # spin-waits make it up to 10x slower: CI stays fast and steady with one.
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    # The benchmarks print their own tables; transformers' and ftcallback's INFO lines would drown them.
    logging.getLogger("ftcallback").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    return device


def models_for(args: argparse.Namespace, full_default: Sequence[str] = MODELS) -> list[str]:
    """``--models`` when given, else tiny-gpt2 in quick mode and ``full_default`` otherwise."""
    if args.models:
        return list(dict.fromkeys(args.models))
    return ["tiny-gpt2"] if args.quick else list(full_default)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run, as typed from the repository root."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = [a for i, a in enumerate(args) if not _is_json_arg(args, i)]
    return " ".join(["python", f"scripts/{script}", *map(shlex.quote, args)])


def _is_json_arg(args: Sequence[str], i: int) -> bool:
    if args[i] == "--json" or args[i].startswith("--json="):
        return True
    return i > 0 and args[i - 1] == "--json"


# --------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A benchmark model with what is needed to prompt it the way ftcallback does."""

    name: str
    model: Any
    tokenizer: Any
    chat: bool  # prompts go through the chat template (instruct model)
    prompts: list[str]
    device: torch.device
    load_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def probe(self, n: int) -> list[str]:
        """The first ``n`` probe prompts (cycled if more are asked for than exist)."""
        return [self.prompts[i % len(self.prompts)] for i in range(n)]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    @property
    def eos_ids(self) -> frozenset[int]:
        """EOS ids as generate sees them: the generation config's plus the tokenizer's."""
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load(name: str, device: torch.device) -> LoadedModel:
    """Load one of :data:`MODELS` on ``device``, in eval mode."""
    start = time.perf_counter()
    if name in TINY_MODELS:
        from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        model = tiny_causal_lm("gpt2" if name == "tiny-gpt2" else "llama", positions=TINY_POSITIONS)
        chat, prompts = False, list(TINY_PROMPTS)
    elif name == "smollm2":
        from ftcallback.testing import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer("smollm2")
        chat, prompts = True, list(SMOL_PROMPTS)
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model.to(device)
    model.eval()
    return LoadedModel(name, model, tokenizer, chat, prompts, device, time.perf_counter() - start)


def encode(lm: LoadedModel, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt, built here (not by ftcallback) the way a user would prompt the model."""
    tok = lm.tokenizer
    out = []
    for prompt in prompts:
        if lm.chat:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        out.append([int(i) for i in ids])
    return out


def left_padded_batches(
    lm: LoadedModel, prompts: Sequence[str], batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of ``batch_size`` prompts, left-padded, as ``generate`` keyword arguments."""
    encoded = encode(lm, prompts)
    batches = []
    for first in range(0, len(encoded), batch_size):
        group = encoded[first : first + batch_size]
        width = max(len(g) for g in group)
        ids = torch.full((len(group), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, tokens in enumerate(group):
            ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
        batches.append({"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)})
    return batches


def generate_kwargs(lm: LoadedModel, max_new_tokens: int, *, fixed_length: bool = False) -> dict[str, Any]:
    """What a user passes to ``generate`` for greedy decoding with the KV cache: ftcallback's settings."""
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": lm.pad_id,
        "use_cache": True,
    }
    if fixed_length:
        kw["min_new_tokens"] = max_new_tokens
    return kw


def fixed_length_kwargs(max_new_tokens: int, fixed_length: bool) -> dict[str, Any] | None:
    """``measure(generation_kwargs=...)`` that forces exactly ``max_new_tokens`` when asked."""
    return {"min_new_tokens": max_new_tokens} if fixed_length else None


def count_output_tokens(new_ids: Sequence[int], eos_ids: Iterable[int]) -> int:
    """Generated tokens up to and including the first EOS (the reference count, done by hand)."""
    eos = set(eos_ids)
    for k, token in enumerate(new_ids):
        if int(token) in eos:
            return k + 1
    return len(new_ids)


# --------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the device synchronised before both clock reads."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def interleaved(rounds: int, conditions: Mapping[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each condition once per round, order reversed every other round (A B, B A, ...).

    Drift on a shared machine then hits every condition equally; compare per-round ratios.
    """
    names = list(conditions)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(conditions[name]())
    return out


def busy_wait(seconds: float) -> None:
    """Spin for ``seconds`` (time.sleep is too coarse for sub-millisecond forwards)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# --------------------------------------------------------------------------- statistics
def median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def cv(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return math.nan
    mean = statistics.fmean(finite)
    return statistics.stdev(finite) / mean if mean else math.nan


def spread(values: Sequence[float]) -> float:
    """max / min of the finite values."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return max(finite) / min(finite) if finite else math.nan


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True) if y > 0]


# --------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: CPU model, cores, memory, load, threads, versions, GPU."""
    import numpy
    import transformers

    import ftcallback

    cpu = platform.processor() or platform.machine()
    mem_gib = math.nan
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gib": mem_gib,
        "load_average_1m": _loadavg(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "ftcallback": ftcallback.__version__,
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return info


def _loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return math.nan


def machine_line(info: Mapping[str, Any]) -> str:
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"{info['cpu']}, {info['cpu_cores_usable']} usable cores, {info['memory_gib']} GiB, "
        f"torch {info['torch']} ({info['torch_threads']} threads), transformers {info['transformers']}, "
        f"Python {info['python']}; device {info['device']}{gpu}; load average {info['load_average_1m']}"
    )


# --------------------------------------------------------------------------- output
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant decimals, NaN as an em dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if digits > 1 and value != 0 and abs(value) < 10 ** -(digits - 1):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float, digits: int = 1, *, signed: bool = True) -> str:
    """``0.034`` -> ``+3.4%`` (``3.4%`` when not ``signed``)."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:+.{digits}f}%" if signed else f"{value * 100:.{digits}f}%"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted with :func:`fmt` unless they are already strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)


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
                "results": _json_clean(self.results),
            }
            path = Path(json_out)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return 0


def _json_clean(value: Any) -> Any:
    """JSON without NaN: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, torch.device):
        return str(value)
    return value
