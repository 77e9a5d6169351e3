"""The README's reference tables match the files a real run writes, key for key, both ways.

One short real run (:func:`helpers_record.full_run`: a tiny GPT-2 with LoRA through a real Trainer,
prices, a breached budget, checkpoints, an injected out-of-memory retry) writes report.json and
TensorBoard events; a standalone ``measure`` writes a measurement JSON. Every key documented in the
README tables marked ``<!-- reference: NAME -->`` must occur in those files, and every key in the files
must be documented. Adding a key means adding a row (or a name to a row) in the README.

Table syntax (first column, backticked, comma-separated): dotted key paths; ``[]`` for the items of a
list of objects; ``{a,b}`` alternatives (``{,_low}`` includes the empty one); ``<name>`` any one path
segment; a trailing ``.*`` documents a whole subtree whose keys are open (``generation_kwargs.*``).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers_record import full_run, lora_gpt2
from helpers_training import PROBE

from ftcallback import measure
from ftcallback.testing import tiny_tokenizer

README = Path(__file__).resolve().parent.parent / "README.md"

#: Documented keys a single-process CPU run cannot write, and why.
NOT_WRITTEN_HERE = {
    "environment.world_size": "distributed runs only",
    "environment.rank": "distributed runs only",
    "efficiency_detail/peak_memory_mb": "CUDA only",
    "efficiency/deployed/<key>": "runs with deployed_form only (tests/test_deployed.py reads them)",
    "efficiency/quality": "runs with references only (tests/test_best_checkpoint.py has them)",
}


# ----------------------------------------------------------------- README side
def reference_table(name: str) -> list[str]:
    """The key patterns of the README table marked ``<!-- reference: name -->``."""
    text = README.read_text(encoding="utf-8")
    marker = f"<!-- reference: {name} -->"
    assert marker in text, f"README.md has no table marked {marker!r}"
    lines = text.split(marker, 1)[1].lstrip("\n").splitlines()
    patterns: list[str] = []
    for line in lines[2:]:  # header and separator
        if not line.startswith("|"):
            break
        first = line.split("|")[1]
        patterns += re.findall(r"`([^`]+)`", first)
    assert patterns, f"the README table {marker!r} documents no keys"
    return [p for pattern in patterns for p in _expand(pattern)]


def _expand(pattern: str) -> list[str]:
    parts = re.split(r"(\{[^}]*\})", pattern)
    options = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(choice) for choice in itertools.product(*options)]


def _regex(pattern: str) -> re.Pattern[str]:
    open_tree = pattern.endswith(".*")
    body = pattern[:-2] if open_tree else pattern
    regex = re.sub(r"<[^>]+>", "[^./]+", re.escape(body).replace(r"\<", "<").replace(r"\>", ">"))
    return re.compile(regex + (r"(\..+|\[\].*)?" if open_tree else ""))


# ----------------------------------------------------------------- file side
def flatten(value: Any, prefix: str = "") -> tuple[set[str], set[str]]:
    """``(leaves, containers)``: dotted paths of every value, objects and lists of objects as containers."""
    leaves: set[str] = set()
    containers: set[str] = set()
    if isinstance(value, dict):
        if prefix:
            containers.add(prefix)
        for key, item in value.items():
            sub_leaves, sub_containers = flatten(item, f"{prefix}.{key}" if prefix else str(key))
            leaves |= sub_leaves
            containers |= sub_containers
    elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
        containers.add(prefix)
        for item in value:
            sub_leaves, sub_containers = flatten(item, f"{prefix}[]")
            leaves |= sub_leaves
            containers |= sub_containers
    else:
        leaves.add(prefix)
    return leaves, containers


def check(name: str, leaves: set[str], containers: set[str], where: str) -> None:
    """Both ways: every documented pattern matches something written; every written leaf is documented."""
    patterns = reference_table(name)
    regexes = [(p, _regex(p)) for p in patterns]
    problems = []
    for pattern, regex in regexes:
        if pattern in NOT_WRITTEN_HERE:
            continue
        if not any(regex.fullmatch(k) for k in leaves | containers):
            problems.append(
                f"`{pattern}` is documented in README.md's `{name}` table but not written in {where}: "
                "remove it from the README, or write it"
            )
    for key in sorted(leaves):
        if not any(regex.fullmatch(key) for _, regex in regexes):
            problems.append(
                f"`{key}` is written in {where} but not documented in README.md's `{name}` table: add it "
                "there (a row, or a name in a row's first column)"
            )
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reference")
    callback, oom = full_run(out / "run")
    assert oom.raised == 1 and callback.report_path is not None and callback.log_dir is not None
    tokenizer = tiny_tokenizer()
    standalone = measure(lora_gpt2(), tokenizer, PROBE[:2], max_new_tokens=3, warmup=1, repeats=1)
    path = standalone.save(out / "measurement.json")
    return {
        "report": json.loads(Path(callback.report_path).read_text(encoding="utf-8")),
        "measurement": json.loads(path.read_text(encoding="utf-8")),
        "log_dir": callback.log_dir,
    }


def test_measurement_json_matches_the_readme(run_files):
    report = run_files["report"]
    measurements = [run_files["measurement"], report["baseline"]]
    measurements += [c["measurement"] for c in report["checks"] if c.get("measurement")]
    assert any(m.get("retry") for m in measurements), "the run must record a retry"
    leaves: set[str] = set()
    containers: set[str] = set()
    for m in measurements:
        more_leaves, more_containers = flatten(m)
        leaves |= more_leaves
        containers |= more_containers
    check("measurement.json", leaves, containers, "a measurement JSON (Measurement.save / report.json)")


def test_report_json_matches_the_readme(run_files):
    report = run_files["report"]
    assert report["stopped"] is not None and report["checkpoints"], "the run must stop and save a checkpoint"
    leaves, containers = flatten(report)
    check("report.json", leaves, containers, "report.json")


def test_tensorboard_tags_match_the_readme(run_files):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_files["log_dir"], size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    written = {t for t in tags["scalars"] + tags["tensors"] if t.startswith(("efficiency/", "efficiency_detail/"))}
    assert "efficiency/samples/text_summary" in tags["tensors"]
    check("tensorboard", written, set(), "the TensorBoard event files")


def test_the_checker_names_the_missing_key():
    """The failure message a helper sees when a key is missing on either side."""
    with pytest.raises(AssertionError, match=r"`schema_version` is documented .* but not written in x"):
        check("measurement.json", {"created_at"}, set(), "x")
    with pytest.raises(AssertionError, match=r"`brand_new_key` is written in x but not documented"):
        check("report.json", {"brand_new_key"}, set(), "x")
