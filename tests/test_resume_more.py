"""Resume cases tests/test_resume.py does not cover: a checkpoint copied into another output_dir, and a
resume after ftcallback's own stop. Same runs as there (see its module docstring)."""

from __future__ import annotations

import shutil

import pytest
from test_resume import EPOCHS, STEPS_PER_EPOCH, _comparable, _efficiency, _trainer, interrupted_run  # noqa: F401

from ftcallback._report import RunReport, report_path

pytestmark = pytest.mark.filterwarnings("ignore:timing is noisy")


def test_resume_from_a_checkpoint_copied_to_another_output_dir(tmp_path, interrupted_run):  # noqa: F811
    out, checkpoint, _ = interrupted_run
    moved = tmp_path / "moved"
    shutil.copytree(checkpoint, moved / checkpoint.name)
    trainer, _ = _trainer(moved, restore=True)
    trainer.train(resume_from_checkpoint=str(moved / checkpoint.name))
    resumed = RunReport.load(report_path(moved))

    straight_out = tmp_path / "straight"
    trainer, _ = _trainer(straight_out, restore=False)
    trainer.train()
    straight = RunReport.load(report_path(straight_out))
    # Raw samples of the checks before the copy come from the first folder's report.json.
    assert _comparable(resumed) == _comparable(straight)
    assert all(c.measurement is not None for c in resumed.checks)
    assert resumed.output_dir == str(moved)
    assert [c["step"] for c in resumed.checkpoints] == [c["step"] for c in straight.checkpoints]
    assert resumed.stopped["message"] == straight.stopped["message"]


@pytest.mark.parametrize("restore", [True, False])
def test_resume_after_our_own_stop_stops_again_at_the_next_breach(tmp_path, restore):
    """Run 1 stops on the budget at epoch 2 (patience 2); resuming from the stop's checkpoint trains on and
    stops again at the next breaching check, with the history of run 1 intact and one stop recorded."""
    out = tmp_path / "out"
    trainer, cb = _trainer(out, restore=False)
    trainer.train()
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH and cb.report.stopped is not None
    first = RunReport.load(report_path(out))

    trainer, _ = _trainer(out, restore=restore)
    trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{2 * STEPS_PER_EPOCH}"))
    cb = _efficiency(trainer)
    assert trainer.state.global_step == 3 * STEPS_PER_EPOCH < EPOCHS * STEPS_PER_EPOCH
    report = RunReport.load(report_path(out))
    assert report.baseline == first.baseline
    assert [(c.kind, c.step, c.consecutive_breaches) for c in report.checks] == [
        ("baseline", 0, 0),
        ("epoch", STEPS_PER_EPOCH, 1),
        ("epoch", 2 * STEPS_PER_EPOCH, 2),
        ("epoch", 3 * STEPS_PER_EPOCH, 3),
    ]
    assert all(c.measurement is not None for c in report.checks)
    assert report.stopped["step"] == 3 * STEPS_PER_EPOCH
    assert [c["step"] for c in report.checkpoints] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
