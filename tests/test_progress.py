"""Progress of long measurements: a bar on a terminal, an INFO line per tenth elsewhere, an expected duration."""

from __future__ import annotations

import io
import logging

import pytest

from ftcallback import measure
from ftcallback._progress import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_one_line_per_tenth_and_the_expected_duration(caplog: pytest.LogCaptureFixture) -> None:
    clock, stream = _Clock(), io.StringIO()
    bar = Progress(500, "baseline", enabled=True, clock=clock, stream=stream)
    bar.start()
    with caplog.at_level(logging.INFO, logger="ftcallback.measure"):
        for _ in range(500):
            clock.now += 0.5
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "baseline: 500 requests, about 4 min"  # 0.5 s per request, 250 s
    progress = lines[1:]
    assert len(progress) == 9  # 10%, 20%, ... 90%: the end itself is the measurement's own line
    assert progress[0] == "baseline: 50/500 requests (10%), 25 s elapsed, about 4 min left"
    assert progress[-1].startswith("baseline: 450/500 requests (90%)")
    assert stream.getvalue() == ""  # no bar written to a file


def test_terminal_gets_a_bar_and_the_announcement_above_it(caplog: pytest.LogCaptureFixture) -> None:
    clock, stream = _Clock(), _Terminal()
    bar = Progress(20, "epoch check at step 4", enabled=True, clock=clock, stream=stream)
    bar.start()
    with caplog.at_level(logging.INFO, logger="ftcallback.measure"):
        for _ in range(20):
            clock.now += 3.0
            bar.update(1)
        bar.close()
    text = stream.getvalue()
    assert "epoch check at step 4: 20 requests, about 60 s" in text
    assert "/20 [" in text  # the bar itself (tqdm redraws it at most every 0.1 s)
    assert not caplog.records  # the lines are the bar's, not the log's


def test_disabled_shows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stream = _Terminal()
    with caplog.at_level(logging.INFO, logger="ftcallback.measure"):
        bar = Progress(10, "measure", enabled=False, stream=stream)
        bar.update(10)
        bar.close()
    assert stream.getvalue() == "" and not caplog.records


@pytest.mark.filterwarnings("ignore::ftcallback.NoisyMeasurementWarning")
def test_measure_reports_progress_of_its_timed_requests(tokenizer, gpt2, caplog) -> None:
    prompts = [f"the model returns {i}" for i in range(10)]
    with caplog.at_level(logging.INFO, logger="ftcallback.measure"):
        measure(gpt2, tokenizer, prompts, max_new_tokens=2, repeats=2, progress="baseline")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("baseline:")]
    assert lines[0].startswith("baseline: 20 requests, about ")
    assert [line.split()[1] for line in lines[1:]] == [f"{n}/20" for n in range(2, 20, 2)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftcallback.measure"):
        measure(gpt2, tokenizer, prompts, max_new_tokens=2, repeats=1)
    assert not [r for r in caplog.records if " requests" in r.getMessage() and "about" in r.getMessage()]
