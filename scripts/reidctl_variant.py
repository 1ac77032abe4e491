"""`reidctl` with a choice of the code undone or made otherwise, to measure what that choice gives
(docs/PERFORMANCE.md, figures behind choices, and the CPU section). The rest of the run is the `reidctl` command
after --, detect or bench.

  --switch-interval-ms MS  the interpreter's thread switch interval during the run instead of reidctl's
                           (reidctl.apps.pipeline.SWITCH_INTERVAL_S); 5 is Python's own
  --model-threads-as-is    a model on the CPU computes with torch's own thread count, not with the cores the
                           cameras' readers leave (reidctl.apps.pipeline.model_threads_beside_readers)
  --opencv-threads-as-is   each camera's video decoder, and OpenCV's threads that split the readers' letterbox, at
                           OpenCV's own count (one per core) instead of the reader's share of the cores
                           (reidctl.io.cores.cores_per_reader)
  --frames-mapped          the cameras' first frames are mapped and unmapped on their own by the allocator, not taken
                           from its heaps (reidctl.apps.pipeline.frames_from_the_heap)
  --setup-collected        the objects made before the run stay in the garbage collector's passes, not frozen out
                           of them (reidctl.apps.pipeline.setup_frozen_out_of_collection)
  --sleeping-waits         host threads sleep while they wait for the GPU (CUDA's blocking synchronisation, set on
                           every device's primary context before the process touches CUDA) instead of spinning,
                           CUDA's default
  --blocking-requests      each request to a Triton server is a blocking call in the thread that sends it, instead
                           of an asynchronous one whose answer comes back through a gRPC thread
                           (reidctl.triton.requests.TritonRequests._send)
  --server-cores N         the bundled servers started here moved, every thread, onto N whole cores of their own
                           (the highest numbered) for the run, and back onto every core after it: detect keeps to
                           the others, as with `setup-triton --start --cpus`
  --busy-cores N           N processes beside the run, each spinning on a core for as long as the command runs: a
                           host whose other tenants want N of its cores, to see how a run and its summary's host_cpu
                           and slowest_steps (server_ms) read in a slow spell made on purpose
  --niceness N             detect's process and the bundled servers started here, every thread, at niceness N for
                           the run (negative: ahead of the host's other work; needs root or CAP_SYS_NICE), and the
                           servers back at their own after it; the --busy-cores processes stay at their own

    PYTHONPATH=$PWD python scripts/reidctl_variant.py --switch-interval-ms 5 -- \\
        detect cam01.mp4 ... cam16.mp4 --realtime --mot out/mot --no-progress
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import subprocess
import sys
import types

import reidctl.apps.pipeline as pipeline
from perf import parse_wrapper_args  # this folder's measurement runner
from reidctl.cli import app
from reidctl.io.cores import process_tree, threads_of, usable_cores, whole_cores_from_the_top
from reidctl.triton.requests import TritonRequests
from reidctl.triton.server import all_running_servers, move_server

CU_CTX_SCHED_BLOCKING_SYNC = 0x04


def sleep_in_gpu_waits() -> None:
    """Every device's primary context (the one PyTorch's runtime takes) made with blocking synchronisation; it must
    not be active yet, or the flag would not apply."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        sys.exit("error: --sleeping-waits needs NVIDIA's driver (libcuda.so.1)")

    def call(name: str, *args) -> None:
        result = getattr(cuda, name)(*args)
        if result != 0:
            sys.exit(f"error: {name} failed with CUDA error {result}")

    call("cuInit", 0)
    count = ctypes.c_int()
    call("cuDeviceGetCount", ctypes.byref(count))
    for ordinal in range(count.value):
        device, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
        call("cuDeviceGet", ctypes.byref(device), ordinal)
        call("cuDevicePrimaryCtxSetFlags_v2", device, CU_CTX_SCHED_BLOCKING_SYNC)
        call("cuDevicePrimaryCtxGetState", device, ctypes.byref(flags), ctypes.byref(active))
        if active.value or flags.value & 0x07 != CU_CTX_SCHED_BLOCKING_SYNC:
            sys.exit(f"error: device {ordinal}'s context did not take blocking synchronisation")


def blocking_send(requests: TritonRequests, server, inputs: list, outputs: list, timeout: float) -> list:
    """TritonRequests._send with one blocking call per input chunk, one after another."""
    return [server.client.infer(requests.model_name, [item], requests.model_version, outputs=outputs,
                                client_timeout=timeout) for item in inputs]


@contextlib.contextmanager
def servers_on_cores_of_their_own(count: int):
    """Every bundled server started here on ``count`` whole cores for the duration, then on every core again."""
    servers = all_running_servers()
    if not servers:
        sys.exit("error: --server-cores needs a bundled server started here (reidctl setup-triton --start)")
    cpus = whole_cores_from_the_top(count)
    if len(cpus) >= usable_cores():
        sys.exit(f"error: --server-cores {count} leaves no core for detect")
    for server in servers:
        move_server(server, cpus)
    try:
        yield
    finally:
        for server in servers:
            move_server(server, None)


@contextlib.contextmanager
def cores_kept_busy(count: int):
    """``count`` processes spinning on the CPU for the duration, then ended."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def set_niceness(pids, niceness: int) -> dict[int, int]:
    """Every thread of every process in ``pids`` at ``niceness`` (Linux keeps it per thread); each thread's niceness
    before, by thread id. A thread that ended meanwhile is skipped."""
    before = {}
    for thread in threads_of(pids):
        with contextlib.suppress(ProcessLookupError):
            before[thread] = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, niceness)
    return before


@contextlib.contextmanager
def deployment_at_niceness(niceness: int):
    """This process (the threads it starts later inherit it) and every bundled server started here at ``niceness``
    for the duration; the servers' threads back at their own after it."""
    servers = [pid for server in all_running_servers() for pid in process_tree(server.pid)]
    try:
        servers_before = set_niceness(servers, niceness)
        set_niceness([os.getpid()], niceness)
    except PermissionError:
        sys.exit(f"error: --niceness {niceness} needs root or CAP_SYS_NICE")
    try:
        yield
    finally:
        for thread, niceness_before in servers_before.items():
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, thread, niceness_before)


def undo(name: str, value, owner=pipeline) -> None:
    """``owner``'s ``name`` (the pipeline's, by default) replaced for this run; a name it no longer has is an error,
    not a no-op."""
    if not hasattr(owner, name):
        where = owner.__name__ if isinstance(owner, types.ModuleType) else f"{owner.__module__}.{owner.__qualname__}"
        sys.exit(f"error: {where} has no {name} to undo")
    setattr(owner, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switch-interval-ms", type=float, help="the thread switch interval during the run")
    parser.add_argument("--model-threads-as-is", action="store_true", help="torch's own thread count on the CPU")
    parser.add_argument("--opencv-threads-as-is", action="store_true",
                        help="OpenCV's own thread counts for decoding and letterbox")
    parser.add_argument("--frames-mapped", action="store_true", help="no block of a frame's size freed first")
    parser.add_argument("--setup-collected", action="store_true", help="no freeze of the set-up's objects")
    parser.add_argument("--sleeping-waits", action="store_true", help="host threads sleep in their GPU waits")
    parser.add_argument("--blocking-requests", action="store_true", help="Triton requests as blocking calls")
    parser.add_argument("--server-cores", type=int, help="the local servers on this many cores of their own")
    parser.add_argument("--busy-cores", type=int, default=0, help="this many processes spinning beside the run")
    parser.add_argument("--niceness", type=int, help="detect and the local servers at this niceness for the run")
    args, command = parse_wrapper_args(parser, "a reidctl command and its arguments")
    if args.switch_interval_ms is not None:
        undo("SWITCH_INTERVAL_S", args.switch_interval_ms / 1000)
    if args.model_threads_as_is:
        undo("model_threads_beside_readers", lambda detector, cameras: contextlib.nullcontext())
    if args.opencv_threads_as_is:
        undo("cores_per_reader", lambda readers: 0)  # 0: OpenCV's choice, for the decoders and the letterbox
    if args.frames_mapped:
        undo("frames_from_the_heap", lambda sources: None)
    if args.setup_collected:
        undo("setup_frozen_out_of_collection", contextlib.nullcontext)
    if args.sleeping_waits:
        sleep_in_gpu_waits()
    if args.blocking_requests:
        undo("_send", blocking_send, owner=TritonRequests)
    # the spinners start first, so they keep the niceness this process had
    with (servers_on_cores_of_their_own(args.server_cores) if args.server_cores else contextlib.nullcontext(),
          cores_kept_busy(args.busy_cores),
          deployment_at_niceness(args.niceness) if args.niceness is not None else contextlib.nullcontext()):
        app(command, prog_name="reidctl")


if __name__ == "__main__":
    main()
