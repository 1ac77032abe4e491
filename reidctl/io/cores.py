"""CPU cores: those this process may use and each camera reader's share of them; a Linux CPU list ("0-3,8"), and
processes or threads held to the cores it names.

A local Triton server on cores of its own (``detection.triton.server_cpus``) with `detect` on the others keeps
other work off the server's cores; on a 16-core GPU host it dropped more frames than sharing (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from reidctl.errors import ReidctlError

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def available_cpus() -> set[int]:
    """The CPUs this thread may run on (what its children start with); where that cannot be read, every CPU."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """The CPU cores this thread may run on."""
    return len(available_cpus())


def cores_per_reader(readers: int) -> int:
    """Each of ``readers`` camera readers' share of the cores, at least one: the threads its video's decoder and its
    letterbox may use. OpenCV gives each decoder, and each resize, a thread per core of the machine: with 16 cameras
    on 16 cores that is 256 decoder threads, and a resize split over every core waits for its slowest part on a busy
    host (docs/PERFORMANCE.md has what it cost)."""
    return max(1, usable_cores() // max(1, readers))


def parse_cpu_list(text: str, what: str) -> list[int]:
    """The CPUs a list such as "0-3,8,10-11" names, each one this process may use; ``what`` names the setting in
    the one-line error."""
    if not hasattr(os, "sched_setaffinity"):
        raise ReidctlError(f"{what}: keeping processes to CPU cores needs Linux")
    cpus = _cpu_set(text)
    if cpus is None:
        raise ReidctlError(f"{what}: '{text}' is not a CPU list such as 0-3 or 0,2,4-7")
    unusable = cpus - available_cpus()
    if unusable:
        raise ReidctlError(f"{what}: CPU {cpu_list_text(unusable)} is not among the CPUs this process may use "
                           f"({cpu_list_text(available_cpus())})")
    return sorted(cpus)


def _cpu_set(text: str) -> set[int] | None:
    """The CPUs of a CPU list, None if it is not one."""
    cpus: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        match = _RANGE.fullmatch(part)
        if match is None or int(match[2] or match[1]) < int(match[1]):
            return None
        cpus.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    return cpus


def whole_cores_from_the_top(count: int) -> list[int]:
    """At least ``count`` of this process's CPUs, the highest numbered first, each with the other hardware threads
    of its core (sharing a core with the rest would share its time too)."""
    mine, chosen = available_cpus(), set()
    for cpu in sorted(mine, reverse=True):
        if len(chosen) >= count:
            break
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        with contextlib.suppress(OSError):
            chosen |= (_cpu_set(siblings.read_text().strip()) or set()) & mine
        chosen.add(cpu)
    return sorted(chosen)


def cpu_list_text(cpus: Iterable[int]) -> str:
    """The CPU list of ``cpus`` in ranges: [0, 1, 2, 3, 8] is "0-3,8"."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@contextlib.contextmanager
def thread_on(cpus: Iterable[int] | None) -> Iterator[None]:
    """The calling thread, and every thread or process it starts meanwhile (they inherit it), on ``cpus`` for the
    duration, then back on what it had; None: left as it is."""
    if not cpus:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def threads_of(pids: Iterable[int]) -> list[int]:
    """The thread ids of every process in ``pids`` (Linux); a process that ended has none."""
    return [int(task.name) for pid in pids for task in Path(f"/proc/{pid}/task").glob("*")]


def move_processes(pids: Iterable[int], cpus: Iterable[int]) -> None:
    """Every thread of every process in ``pids`` onto ``cpus`` (the threads they start later inherit it); a thread
    or process that ended meanwhile is skipped."""
    cpus = set(cpus)
    for thread in threads_of(pids):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(thread, cpus)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server and its python backend stubs)."""
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                tree.extend(children)
                frontier.extend(children)
    return tree


def own_cpu_seconds() -> float:
    """The CPU time of this process's threads and of its child processes that ended."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def cpu_seconds_by_process(pids: Iterable[int]) -> dict[int, float]:
    """The CPU time each of the processes ``pids`` has used, every thread of it; one that has ended is left out."""
    ticks, used = os.sysconf("SC_CLK_TCK"), {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def cpu_seconds_between(before: dict[int, float], after: dict[int, float]) -> float:
    """The CPU time the processes read both times used in between (one that ended meanwhile counts nothing)."""
    return sum(seconds - before[pid] for pid, seconds in after.items() if pid in before)


@dataclass(frozen=True)
class HostCpuTimes:
    """The whole host's CPU time so far, every core and every process, in seconds."""

    busy: float  # running anything: user, system, interrupts
    stolen: float  # taken by the hypervisor for other machines while this one had work
    waited: float | None  # some runnable thread waited for a core (Linux's CPU pressure, "some"); None: not said


def host_cpu_times() -> HostCpuTimes | None:
    """The host's CPU time from /proc/stat and /proc/pressure/cpu; None where /proc/stat cannot be read (not Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ([int(v) / ticks for v in fields[1:9]] + [0.0] * 8)[:8]
    waited = None
    with contextlib.suppress(OSError, ValueError, IndexError):  # a kernel without pressure stall information
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]  # "some avg10=... total=MICROSECONDS"
        waited = int(some.rpartition("total=")[2]) / 1e6
    return HostCpuTimes(user + nice + system + irq + softirq, steal, waited)


def _host_rates(before: tuple[float, HostCpuTimes], after: tuple[float, HostCpuTimes]) -> dict:
    (start, first), (end, last) = before, after
    span = end - start
    return {"cores_busy": round((last.busy - first.busy) / span, 2),
            "cores_stolen": round((last.stolen - first.stolen) / span, 2),
            "cpu_pressure": round((last.waited - first.waited) / span, 3)
            if first.waited is not None and last.waited is not None else None}


# A second of a run counts as short of cores when some runnable thread waited for one this share of it (Linux's CPU
# pressure). Real-time runs with nothing else on a 16-core GPU host read 1-2 % in their worst second; beside
# processes spinning on 8 of its cores 6-13 %, and every one of those dropped frames (docs/PERFORMANCE.md, machines
# Z1-Z3).
SHORT_OF_CORES_PRESSURE = 0.03
# ... or when the hypervisor took at least this many cores from the host in it (steal: the virtual machine's cores
# waiting for the physical ones, which the pressure above cannot see). Through the bundled server, real-time runs
# with 0.65-1.86 cores stolen over the run missed the targets in 8 of 9, those with at most 0.13 in 1 of 19, whose
# drop fell in a second of 0.35 (docs/PERFORMANCE.md, machines Z4-Z6).
SHORT_OF_CORES_STOLEN = 0.25


def short_of_cores(second: dict) -> bool:
    """Whether the host was short of cores in this second of ``HostCpuWatch.summary()["by_second"]``."""
    pressure = second["cpu_pressure"]
    return (pressure is not None and pressure >= SHORT_OF_CORES_PRESSURE) or (
        second["cores_stolen"] >= SHORT_OF_CORES_STOLEN)


def counted_short_of_cores(counts_by_second: Mapping[str, int], host: dict | None) -> int | None:
    """Of what a run counted by the second it fell in (its dropped frames, its longest steps), how much fell in a
    second when the host was short of cores; None where the host's CPU was not read."""
    if host is None:
        return None
    seconds = host["by_second"]  # whole seconds only: what fell in the run's last part-second is not counted
    return sum(count for index, count in counts_by_second.items()
               if index in seconds and short_of_cores(seconds[index]))


def short_of_cores_warning(summary: dict, latency_missed: bool = False) -> str | None:
    """One line when most of a run's dropped frames fell in seconds the host was short of cores, or, for a run that
    dropped none and missed its latency budget (``latency_missed``), when most of its longest steps ended in such
    seconds; with the cores the host and this run kept busy: the rest is other work (or a run with more threads than
    cores). None otherwise."""
    host, dropped = summary.get("host_cpu"), summary["dropped"]
    short = (host or {}).get("dropped_short_of_cores")
    if dropped:
        if not short or 2 * short < dropped:
            return None
        what = f"{short} of the {dropped} dropped frames fell"
    else:
        steps = summary.get("slowest_steps") or []
        if not latency_missed or not steps:
            return None
        short = counted_short_of_cores(Counter(str(int(step["ended_s"])) for step in steps), host)
        if not short or 2 * short < len(steps):
            return None
        what = (f"{short} of the run's {len(steps)} longest steps "
                f"({min(s['ms'] for s in steps):.1f}-{max(s['ms'] for s in steps):.1f} ms) ended")
    own = " and ".join(f"{side} {used:.1f}" for side, used in (summary.get("cpu_cores_busy") or {}).items()
                       if used is not None)
    pressure = "" if host["cpu_pressure"] is None else f"CPU pressure {host['cpu_pressure']:.0%} and "
    return (f"{what} in seconds when threads waited for a core over "
            f"{SHORT_OF_CORES_PRESSURE:.0%} of the time or the hypervisor took {SHORT_OF_CORES_STOLEN:g} of a core "
            f"or more ({pressure}{host['cores_stolen']:.2f} cores stolen over the run; the host kept "
            f"{host['cores_busy']:.1f} of {host['cores']} cores busy, {own} of them this run's): the host was short "
            "of cores")


class HostCpuWatch:
    """The host's CPU over a run, read at ``start``, every ``interval`` seconds after it on a thread of its own,
    and at ``stop``: the cores kept busy by every process (the run's, a local server's, anyone else's), the cores
    the hypervisor stole, and the share of the time some runnable thread waited for a core. A second whose frames
    dropped with cores stolen or a high pressure points at the host rather than at the pipeline."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.perf_counter):
        self._interval, self._clock = interval, clock
        self._ticks: list[tuple[float, HostCpuTimes]] = []  # at start, then each interval
        self._last: tuple[float, HostCpuTimes] | None = None  # at stop
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[float, HostCpuTimes] | None:
        times = host_cpu_times()
        return None if times is None else (self._clock(), times)

    def start(self) -> None:
        first = self._read()
        if first is None:
            return  # nothing to read here
        self._ticks.append(first)
        self._thread = threading.Thread(target=self._read_each_interval, name="reidctl-host-cpu", daemon=True)
        self._thread.start()

    def _read_each_interval(self) -> None:
        started, count = self._ticks[0][0], 1
        while not self._stopped.wait(max(0.0, started + count * self._interval - self._clock())):
            if (reading := self._read()) is not None:
                self._ticks.append(reading)
            count += 1

    def stop(self) -> None:
        """The last reading (once: a second call changes nothing)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._last = self._read()

    def summary(self) -> dict | None:
        """The whole run's figures and each whole interval's (``by_second`` with the default interval of one
        second, keyed as detect's by_second); None where nothing could be read."""
        if not self._ticks or self._last is None or self._last[0] <= self._ticks[0][0]:
            return None
        return {"cores": os.cpu_count(), **_host_rates(self._ticks[0], self._last),
                "by_second": {str(index): _host_rates(before, after)
                              for index, (before, after) in enumerate(pairwise(self._ticks))}}
