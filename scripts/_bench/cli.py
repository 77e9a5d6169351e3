"""The command line every benchmark shares: its flags, the setup they imply, and the reproducing command."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence

import torch

from _bench.catalog import MODELS


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
