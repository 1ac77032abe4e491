"""Which threads of a `reidctl` run hold the interpreter lock, and for what share of the run: a sampling profile by
py-spy (`pip install py-spy`) of the thread holding the lock, over a window of the run once its cameras have started.
The rest of the command line is the `reidctl` command after --, detect or bench.

The run starts as a child. Once one of its threads is named with --after-thread (detect's camera readers:
"camera-<name>"), `py-spy record --pid PID --gil --threads --nonblocking` samples it for --seconds at --rate: each
sample names the thread that held the lock then, if any. A thread's share is its samples over the window's sample
ticks that py-spy read (seconds x rate, less those it reports as errors: a stack changed while it was read); threads
are grouped by the names reidctl gives them. The window must end before the run does,
or the shares would count ticks after it: that is an error.

    PYTHONPATH=$PWD python scripts/gil_profile.py --seconds 5 --json gil.json -- \\
        detect cam01.mp4 ... cam16.mp4 --realtime --mot out/mot --no-progress
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from perf import find_program, parse_wrapper_args  # this folder's measurement runner

# reidctl's thread names (reidctl.apps.cameras, reidctl.apps.pipeline, reidctl.io.output_stage) -> group
GROUPS = (("camera-", "camera readers"), ("detect-batches-", "batch loops"), ("outputs", "output stage"),
          ("MainThread", "main thread"))
DUMPED_THREAD = re.compile(r'^Thread \S+ \([^)]*\): "(.*)"$', re.MULTILINE)  # a thread's line in `py-spy dump`
RAW_THREAD = re.compile(r"^thread \((\w+)\)(?:: (.*))?$")  # the first frame of a raw stack with --threads
RECORD_ERRORS = re.compile(r"Errors: (\d+)")  # ticks whose stacks py-spy failed to read, in its last words


def group_of(thread: str) -> str:
    return next((group for prefix, group in GROUPS if thread.startswith(prefix)), thread)


def wait_for_thread(tool: str, run: subprocess.Popen, prefix: str, timeout_s: float) -> None:
    """Until the run has a thread whose name starts with ``prefix``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.poll() is not None:
            sys.exit(f"error: the run ended (exit {run.returncode}) before a thread named {prefix}* started")
        dump = subprocess.run([tool, "dump", "--pid", str(run.pid), "--nonblocking"], capture_output=True, text=True)
        if any(name.startswith(prefix) for name in DUMPED_THREAD.findall(dump.stdout)):
            return
        time.sleep(0.2)
    sys.exit(f"error: no thread named {prefix}* after {timeout_s:.0f} s")


def shares(raw: str, ticks: int) -> dict:
    """Samples per thread group (with its threads and the functions it held the lock in most) over ``ticks``, the
    sample ticks py-spy read."""
    samples: Counter[str] = Counter()
    threads: dict[str, set[str]] = {}
    functions: dict[str, Counter[str]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        match = RAW_THREAD.match(frames[0])
        if not match:
            continue
        thread_id, name = match.groups()
        group = group_of(name or f"thread {thread_id}")
        samples[group] += int(count)
        threads.setdefault(group, set()).add(thread_id)
        innermost = frames[-1] if len(frames) > 1 else "(no Python frame)"
        functions.setdefault(group, Counter())[innermost] += int(count)
    return {
        "held": round(sum(samples.values()) / ticks, 4),
        "groups": [{"group": group, "threads": len(threads[group]), "samples": count,
                    "share": round(count / ticks, 4),
                    "top_functions": [{"function": name, "samples": n}
                                      for name, n in functions[group].most_common(5)]}
                   for group, count in samples.most_common()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="the sampled window (default 5)")
    parser.add_argument("--rate", type=int, default=200, help="samples a second (default 200)")
    parser.add_argument("--after-thread", default="camera-", help="the window starts once a thread with a name "
                        "starting so runs (default camera-: detect's readers)")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for that thread "
                        "(a first compile takes minutes)")
    parser.add_argument("--json", type=Path, help="write the shares here")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw samples here")
    args, command = parse_wrapper_args(parser, "the reidctl command")
    tool = find_program("py-spy") or sys.exit("error: py-spy not found (pip install py-spy)")
    run = subprocess.Popen([sys.executable, "-m", "reidctl", *command])
    try:
        wait_for_thread(tool, run, args.after_thread, args.start_timeout)
        with tempfile.TemporaryDirectory() as scratch:
            raw_path = args.raw or Path(scratch) / "samples.txt"
            record = subprocess.run([tool, "record", "--pid", str(run.pid), "--gil", "--threads", "--nonblocking",
                                     "--rate", str(args.rate), "--duration", str(args.seconds), "--format", "raw",
                                     "--output", str(raw_path)], capture_output=True, text=True)
            # py-spy stops sampling when the run ends (and says so), and the run may end a moment after that
            if run.poll() is not None or "process exited" in record.stdout + record.stderr:
                sys.exit(f"error: the run ended within the {args.seconds} s window: shorten --seconds")
            if record.returncode != 0:
                said = (record.stderr.strip().splitlines() or [f"exit status {record.returncode}"])[-1]
                sys.exit(f"error: py-spy record failed: {said}")
            raw = raw_path.read_text()
        exit_code = run.wait()
    except BaseException:  # an error or Ctrl-C here must not leave the run behind
        run.terminate()
        raise
    said = record.stdout + record.stderr
    errors = int(RECORD_ERRORS.findall(said)[-1]) if RECORD_ERRORS.search(said) else 0
    ticks = args.seconds * args.rate
    result = {"command": command, "seconds": args.seconds, "rate": args.rate, "ticks": ticks, "errors": errors,
              "sampler_behind": "behind" in said, "run_exit_code": exit_code, **shares(raw, ticks - errors)}
    print(f"\ninterpreter lock held {100 * result['held']:.1f} % of {args.seconds} s ({ticks - errors} of {ticks} "
          f"ticks at {args.rate}/s read){' - the sampler fell behind' if result['sampler_behind'] else ''}")
    for row in result["groups"]:
        print(f"  {row['group']:<16} {row['threads']:>3} threads  {100 * row['share']:5.1f} %  "
              f"{row['top_functions'][0]['function']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
