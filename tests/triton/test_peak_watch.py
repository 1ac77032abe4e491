"""The Triton runner's peak GPU memory: nvidia-smi tells what a server holds now, so a PeakWatch keeps the most it
read, on a thread of its own while the runner is open."""

import threading
import time

from reidctl.triton.client import PeakWatch


class Readings:
    """A measurement that returns the given readings in turn, then the last one again; counts its calls."""

    def __init__(self, *values):
        self.values = list(values)
        self.calls = 0
        self.all_read = threading.Event()

    def __call__(self):
        self.calls += 1
        if self.calls >= len(self.values):
            self.all_read.set()
        return self.values[min(self.calls, len(self.values)) - 1]


def test_the_peak_is_the_most_read_not_the_last():
    watch = PeakWatch(Readings(300, 500, 200))
    assert [watch.sample() for _ in range(3)] == [300, 500, 500]


def test_a_started_watch_reads_on_its_own_until_stopped():
    readings = Readings(100, 900, 300)
    watch = PeakWatch(readings, interval=0.001)
    watch.start()
    assert readings.all_read.wait(10)  # the peak came and went between the runner's own calls
    watch.stop()
    calls = readings.calls
    assert watch.sample() == 900
    assert readings.calls == calls + 1  # only that sample: the thread has ended


def test_nothing_measured_at_the_start_starts_no_thread():
    """A server on another host, or no GPU: nothing to watch, and no thread reads on."""
    readings = Readings(None)
    watch = PeakWatch(readings, interval=0.001)
    watch.start()
    time.sleep(0.05)  # fifty intervals
    assert readings.calls == 1 and watch.sample() is None
    watch.stop()
