"""Shared stage helpers on a real local Ray."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray]


def test_map_bounded_streams_in_order(ray_local):
    """Results come in submission order, and no more than ``max_in_flight`` tasks are
    submitted before the first result is handed back (the driver never holds them all)."""
    from kernelbank.stages.common import map_bounded
    square = ray_local.remote(num_cpus=0.1)(lambda x: x * x)
    pulled = []

    def items():
        for i in range(20):
            pulled.append(i)
            yield (i,)
    seen = []
    for result in map_bounded(square, items(), max_in_flight=3):
        seen.append((result, len(pulled)))
    assert [r for r, _ in seen] == [i * i for i in range(20)]
    # the 4th item is pulled before the 1st result is yielded, never more
    assert seen[0][1] == 4
    assert all(pulled_then <= k + 4 for k, (_, pulled_then) in enumerate(seen))


def test_map_bounded_asks_a_callable_limit_again_before_each_submission(ray_local):
    """A limit that grows (a node joined) lets more tasks into flight at once."""
    from kernelbank.stages.common import map_bounded
    echo = ray_local.remote(num_cpus=0.1)(lambda x: x)
    asked = []

    def limit():
        asked.append(len(asked))
        return 1 if len(asked) < 5 else 4
    pulled = []

    def items():
        for i in range(12):
            pulled.append(i)
            yield (i,)
    seen = [(result, len(pulled)) for result in map_bounded(echo, items(), max_in_flight=limit)]
    assert [r for r, _ in seen] == list(range(12))
    assert len(asked) >= 12                       # asked again, not once at the start
    # one in flight at first (the 2nd item is pulled before the 1st result is handed
    # back), four later on (the item pulled when result k is handed back is k + 5th)
    assert seen[0][1] == 2 and max(p - k for k, (_, p) in enumerate(seen)) == 5


@pytest.mark.ray
def test_sigterm_inside_a_ray_wait_stops_as_terminated(ray_local):
    """SIGTERM (``ray job stop``) must exit 143 wherever it lands; Ray 2.60 turns a signal
    handler's exception raised inside its wait into a bare KeyboardInterrupt (exit 130)."""
    import os
    import signal
    import threading
    import time

    from kernelbank.stages.common import Terminated, stop_on_sigterm

    @ray_local.remote(num_cpus=0)
    def forever():
        time.sleep(120)

    ref = forever.remote()
    stopped = None
    try:
        with stop_on_sigterm():
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
            ray_local.wait([ref], timeout=30)       # the signal lands in here
    except KeyboardInterrupt as error:              # caught here: a bare one must not
        stopped = error                             # end the test session
    finally:
        ray_local.cancel(ref, force=True)
    assert type(stopped) is Terminated and "received signal" in str(stopped), repr(stopped)
