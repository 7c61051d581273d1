"""Progress lines for job logs: counts, rate, ETA, errors; quiet and terminals (no Ray)."""

from __future__ import annotations

import io
import logging

import pyarrow as pa
import pytest

from kernelbank.stages.progress import LOGGER, Progress, configure_output, info_enabled, track


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_level():
    logger = logging.getLogger(LOGGER)
    level = logger.level
    yield
    logger.setLevel(level)


def test_one_line_per_interval_with_rate_eta_and_errors():
    clock, stream = Clock(), io.StringIO()
    progress = Progress("fit", total=1000, interval=5.0, stream=stream, clock=clock)
    for _ in range(10):                     # 100 images per second, 2 errors per second
        clock.now += 1.0
        progress.update(100, errors=2)
        if progress.done == 500:
            break
    progress.close()
    # one line when 5 s had passed; close adds none (nothing new since that line)
    assert stream.getvalue().splitlines() == [
        "[kernelbank] fit: 500/1,000 images (50.0%), 100 images/s, ETA 5s, 10 errors"]
    clock.now += 1.0
    progress.update(500)
    progress.close()
    assert stream.getvalue().splitlines()[-1] == \
        "[kernelbank] fit: 1,000/1,000 images (100.0%), 167 images/s, 10 errors"   # 1000/6 s


def test_eta_uses_the_recent_rate_and_long_durations_read_well():
    clock, stream = Clock(), io.StringIO()
    progress = Progress("features", total=1_000_000, interval=0.0, stream=stream, clock=clock)
    clock.now += 1000.0
    progress.update(1000)                   # slow start: 1 image/s
    clock.now += 40.0
    progress.update(4000)                   # now 100 images/s
    line = stream.getvalue().splitlines()[-1]
    # the window forgets the slow start: rate 100/s, 995,000 left -> 2h45m50s
    assert "5,000/1,000,000 images (0.5%), 100 images/s, ETA 2h45m, 0 errors" in line


def test_no_lines_on_a_terminal_or_when_quiet():
    terminal = Terminal()
    with Progress("fit", total=10, interval=0.0, stream=terminal) as progress:
        progress.update(10)
    assert terminal.getvalue() == ""        # Ray's bars show progress there
    log = io.StringIO()
    assert configure_output(quiet=True, stream=log) is False and not info_enabled()
    with Progress("fit", total=10, interval=0.0, stream=log) as progress:
        progress.update(10)
    assert log.getvalue() == ""
    assert configure_output(log_level="debug", stream=log) is True and info_enabled()
    assert configure_output(log_level="WARNING", stream=log) is False
    with pytest.raises(ValueError, match="log_level must be one of"):
        configure_output(log_level="chatty")


def test_track_counts_rows_and_error_rows_of_any_batch_format():
    stream = io.StringIO()
    clock = Clock()
    progress = Progress("read", total=5, interval=1e9, stream=stream, enabled=True, clock=clock)
    batches = [pa.table({"reason": [None, "bad", None]}),
               {"reason": [None, "worse"]}]
    for batch in track(batches, progress):
        assert any(batch is b for b in batches)
        clock.now += 1.0
    assert (progress.done, progress.errors) == (5, 2)
    progress.close()
    assert stream.getvalue() == "[kernelbank] read: 5/5 images (100.0%), 5 images/s, 2 errors\n"
