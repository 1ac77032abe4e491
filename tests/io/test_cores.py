"""CPU lists and the cores a server or detect is kept to (reidctl.io.cores)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reidctl.errors import ReidctlError
from reidctl.io.cores import (
    HostCpuWatch,
    available_cpus,
    cpu_list_text,
    parse_cpu_list,
    cpu_seconds_between,
    cpu_seconds_by_process,
    counted_short_of_cores,
    host_cpu_times,
    short_of_cores_warning,
    thread_on,
    whole_cores_from_the_top,
)


def test_cpu_lists_read_and_write_as_linux_writes_them():
    assert cpu_list_text([8, 0, 1, 2, 3, 10, 11]) == "0-3,8,10-11"
    assert cpu_list_text([]) == ""
    lowest = min(available_cpus())
    assert parse_cpu_list(f"{lowest}", "--cpus") == [lowest]
    assert parse_cpu_list(cpu_list_text(available_cpus()), "--cpus") == sorted(available_cpus())


@pytest.mark.parametrize("text", ["", "a", "2-1", "1,", "-1", "0-"])
def test_what_is_not_a_cpu_list_is_one_line_error(text):
    with pytest.raises(ReidctlError, match=r"^--cpus: '.*' is not a CPU list such as 0-3"):
        parse_cpu_list(text, "--cpus")


def test_a_cpu_this_process_may_not_use_is_named():
    beyond = max(available_cpus()) + 1
    with pytest.raises(ReidctlError) as caught:
        parse_cpu_list(f"0-{beyond}", "--cpus")
    assert f"CPU {beyond} is not among the CPUs this process may use ({cpu_list_text(available_cpus())})" in str(
        caught.value)


def test_whole_cores_come_from_the_top_with_their_hardware_threads():
    mine = available_cpus()
    chosen = whole_cores_from_the_top(1)
    assert max(mine) in chosen and set(chosen) <= mine
    siblings = Path(f"/sys/devices/system/cpu/cpu{max(mine)}/topology/thread_siblings_list")
    if siblings.exists():  # the highest CPU's core: every thread of it that this process may use
        assert set(_cpus(siblings.read_text())) & mine <= set(chosen)
    assert set(whole_cores_from_the_top(len(mine))) == mine


def _cpus(text: str) -> list[int]:
    """The CPUs of a list as the kernel writes it."""
    out = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def test_a_thread_held_to_cores_starts_processes_there_and_gets_its_own_back():
    mine = available_cpus()
    one = {max(mine)}
    with thread_on(one):
        assert os.sched_getaffinity(0) == one
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(sorted(one))
    assert os.sched_getaffinity(0) == mine


def test_a_processes_cpu_time_is_read_and_one_that_ended_counts_nothing():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                             "while time.process_time() < end: pass\ntime.sleep(30)"])
    short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        before = cpu_seconds_by_process([busy.pid, short.pid, 2**22 + 7])  # beyond the largest pid: never there
        assert set(before) == {busy.pid, short.pid}
        deadline = time.monotonic() + 20
        while cpu_seconds_by_process([busy.pid])[busy.pid] < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        short.kill()
        short.wait()
        after = cpu_seconds_by_process([busy.pid, short.pid])
        assert set(after) == {busy.pid}
        assert 0.4 - before[busy.pid] <= cpu_seconds_between(before, after) < 5
    finally:
        busy.kill()
        busy.wait()


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_host_cpu_watch_sees_a_busy_core_interval_by_interval():
    """The host's CPU read at the start, each interval and the stop: a thread that spins through the watch keeps
    at least half a core busy in its intervals, and in the whole."""
    assert host_cpu_times().busy > 0
    watch = HostCpuWatch(interval=0.1)
    watch.start()
    spin(0.45)
    watch.stop()
    watch.stop()  # a second stop changes nothing
    summary = watch.summary()
    assert summary["cores"] == os.cpu_count()
    intervals = list(summary["by_second"].values())
    assert len(intervals) >= 3 and list(summary["by_second"]) == [str(i) for i in range(len(intervals))]
    assert max(interval["cores_busy"] for interval in intervals) >= 0.5 and summary["cores_busy"] >= 0.5
    assert all(interval["cores_stolen"] >= 0 for interval in intervals)
    if Path("/proc/pressure/cpu").exists():  # a kernel with pressure stall information
        assert 0 <= summary["cpu_pressure"] <= 1
    assert HostCpuWatch().summary() is None  # never started: nothing to say


def _host(pressures: list[float | None], stolen: list[float] | None = None) -> dict:
    seconds = {str(index): {"cores_busy": 12.6, "cores_stolen": (stolen or [0.0] * len(pressures))[index],
                            "cpu_pressure": pressure}
               for index, pressure in enumerate(pressures)}
    return {"cores": 16, "cores_busy": 12.6, "cores_stolen": 0.0, "cpu_pressure": 0.1, "by_second": seconds}


def test_frames_dropped_while_the_host_was_short_of_cores_are_told_apart():
    """A dropped frame counts against the host when the second it was dropped in had threads waiting for a core
    3 % of the time or more, or the hypervisor taking a quarter of a core or more; one dropped in a calm second, or
    after the last second read, does not."""
    host = _host([0.01, 0.03, 0.12, 0.02, 0.01, 0.01], stolen=[0.0, 0.0, 0.0, 0.0, 0.25, 0.24])
    assert counted_short_of_cores({"0": 5, "1": 2, "2": 7, "3": 1, "4": 4, "5": 6, "6": 9}, host) == 13
    assert counted_short_of_cores({}, host) == 0
    assert counted_short_of_cores({"0": 3}, {**host, "by_second": {}}) == 0  # a run shorter than a second
    # a kernel without pressure figures: the stolen cores still tell
    seconds = {index: {**second, "cpu_pressure": None} for index, second in host["by_second"].items()}
    no_pressure = {**host, "cpu_pressure": None, "by_second": seconds}
    assert counted_short_of_cores({"0": 3, "2": 1, "4": 2}, no_pressure) == 2
    assert counted_short_of_cores({"0": 1}, None) is None  # the host's CPU not read at all


def test_the_warning_names_the_host_only_when_most_drops_fell_while_it_was_short_of_cores():
    host = {**_host([0.12]), "dropped_short_of_cores": 48}
    summary = {"dropped": 72, "host_cpu": host, "cpu_cores_busy": {"detect": 4.0, "server": 0.7}}
    line = short_of_cores_warning(summary)
    assert line.startswith("48 of the 72 dropped frames fell in seconds when threads waited for a core over 3% of "
                           "the time or the hypervisor took 0.25 of a core or more (CPU pressure 10% and 0.00 cores "
                           "stolen over the run;")
    assert "12.6 of 16 cores busy, detect 4.0 and server 0.7 of them this run's" in line
    without_pressure = short_of_cores_warning({**summary, "host_cpu": {**host, "cpu_pressure": None}})
    assert "more (0.00 cores stolen over the run;" in without_pressure  # a kernel without pressure figures
    assert short_of_cores_warning({**summary, "dropped": 97}) is None  # under half: the pipeline's own limit
    assert short_of_cores_warning({**summary, "dropped": 0}) is None
    assert short_of_cores_warning({**summary, "host_cpu": {**host, "dropped_short_of_cores": None}}) is None
    assert short_of_cores_warning({**summary, "host_cpu": None}) is None


def test_a_run_that_dropped_nothing_and_missed_its_latency_names_the_host_when_its_longest_steps_fell_short():
    """A run can miss its P99 budget in a spell of steal without dropping a frame: the warning then counts its
    longest steps that ended in seconds short of cores, and says nothing for a run within its budget."""
    host = _host([0.01, 0.01, 0.01, 0.01], stolen=[0.05, 1.26, 0.9, 0.02])
    steps = [{"ended_s": ended, "ms": ms, "frames": 8, "server_ms": None}
             for ended, ms in ((1.2, 70.6), (2.9, 58.2), (1.4, 51.6), (3.1, 39.3), (0.5, 37.0))]
    summary = {"dropped": 0, "host_cpu": {**host, "dropped_short_of_cores": 0}, "slowest_steps": steps,
               "cpu_cores_busy": {"detect": 5.1, "server": None}}
    line = short_of_cores_warning(summary, latency_missed=True)
    assert line.startswith("3 of the run's 5 longest steps (37.0-70.6 ms) ended in seconds when threads waited for "
                           "a core over 3% of the time or the hypervisor took 0.25 of a core or more")
    assert line.endswith("detect 5.1 of them this run's): the host was short of cores")
    assert short_of_cores_warning(summary) is None  # within its budget: nothing to explain
    calm = {**summary, "host_cpu": {**_host([0.01] * 4, stolen=[0.05, 0.3, 0.1, 0.02]), "dropped_short_of_cores": 0}}
    assert short_of_cores_warning(calm, latency_missed=True) is None  # 2 of 5 steps: the pipeline's own limit
    assert short_of_cores_warning({**summary, "host_cpu": None}, latency_missed=True) is None
    assert short_of_cores_warning({**summary, "slowest_steps": []}, latency_missed=True) is None
