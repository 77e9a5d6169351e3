"""scripts/gpu_check.py on a machine without a GPU: it skips with exit 77, and its --dry-run runs every check."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_without_cuda_nothing_is_checked_and_nothing_written(
    gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gpu")]) == 77
    assert "no CUDA device: nothing checked" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_runs_every_check_on_the_cpu(gpu_check: ModuleType, tmp_path: Path) -> None:
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path / "gpu"), "--prompts", "2", "--max-new-tokens", "4"])
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert code == (0 if result["passed"] else 1)
    assert result["dry_run"] is True and result["machine"]["device"] == "cpu"
    assert set(result["checks"]) == {
        "synchronised_timing",
        "peak_memory",
        "bf16_autocast",
        "rng_restored",
        "training_undisturbed",
    }
    for name, check in result["checks"].items():
        assert "error" not in check, (name, check)
    # Logic that holds on any host: state restored, training undisturbed, autocast recorded.
    for name in ("peak_memory", "bf16_autocast", "rng_restored", "training_undisturbed"):
        assert result["checks"][name]["passed"], (name, result["checks"][name])
    markdown = (tmp_path / "gpu.md").read_text()
    assert "dry run on CPU: no GPU figures" in markdown and "| training_undisturbed | PASS |" in markdown
