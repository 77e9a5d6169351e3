"""Every example runs, in a fast configuration, so none of them rots.

The multi-process example is launched by tests/test_distributed.py (torchrun and accelerate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _report(output_dir: Path) -> dict:
    return json.loads((output_dir / "efficiency" / "report.json").read_text())


@pytest.mark.slow
def test_trl_sft_example(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "trl"
    proc = _run([str(EXAMPLES / "trl_sft.py"), "--output-dir", str(out), "--epochs", "1"], tmp_path)
    report = _report(out)
    assert [c["kind"] for c in report["checks"]] == ["baseline", "epoch"]
    assert "kind" in proc.stdout and "report:" in proc.stdout


@pytest.mark.slow
def test_peft_lora_example(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    proc = _run([str(EXAMPLES / "peft_lora.py"), "--output-dir", str(out), "--epochs", "1", "--repeats", "2"], tmp_path)
    report = _report(out)
    assert report["checks"][0]["kind"] == "baseline" and report["checks"][0]["status"] == "ok"
    # The adapter comparison ran and printed a verdict.
    assert "unmerged" in proc.stdout and ("SHIP" in proc.stdout)


@pytest.mark.slow
def test_finetune_demo_quick(tmp_path):
    """The README's main job on the real embedded SmolLM2, in its quick configuration."""
    pytest.importorskip("gguf")
    from ftcallback.testing import embedded_model_path

    try:
        embedded_model_path()
    except Exception as exc:  # pragma: no cover - the set-up commands install it
        pytest.skip(f"embedded model not installed: {exc}")
    out = tmp_path / "demo"
    proc = _run([str(EXAMPLES / "finetune_demo.py"), "--quick", "--output-dir", str(out)], tmp_path, timeout=900)
    report = _report(out)
    assert report["baseline"] is not None
    assert report["stopped"] is not None, "the demo's budget must be breached"
    assert "stopping training at epoch" in proc.stderr + proc.stdout
    plot = out / "efficiency" / "plot.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
