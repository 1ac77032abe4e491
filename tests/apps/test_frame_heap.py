"""Frames come from the allocator's heaps from the first one on: each block mapped and unmapped on its own changes
the process's page tables under every thread, and every camera's first frames did that at once."""

import platform
import subprocess
import sys

import pytest

# In a fresh interpreter, where nothing has raised glibc's threshold yet: a frame-sized block made in a new thread
# (a camera's reader), and whether glibc mapped it on its own: the IS_MMAPPED bit (2) of the size word that glibc
# keeps just before every block it hands out.
PROBE = """
import ctypes, sys, threading
import numpy as np
from reidctl.apps.pipeline import frames_from_the_heap
from reidctl.io.sources import MemorySource

frame = np.zeros((1080, 1920, 3), np.uint8)
if sys.argv[1] == "primed":
    frames_from_the_heap([MemorySource([frame], 1)])
mapped = []

def reader():
    block = np.empty_like(frame)
    mapped.append(bool(ctypes.c_size_t.from_address(block.ctypes.data - ctypes.sizeof(ctypes.c_size_t)).value & 2))

thread = threading.Thread(target=reader)
thread.start()
thread.join()
print(mapped[0])
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="what this checks is glibc's malloc (its block header), on Linux")
def test_a_readers_frames_come_from_the_heap_once_a_frame_sized_block_was_freed_before_the_run():
    def mapped_on_its_own(mode: str) -> bool:
        run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60,
                             check=True)
        return run.stdout.strip() == "True"

    assert mapped_on_its_own("fresh")  # what glibc does unprimed: the probe sees the difference
    assert not mapped_on_its_own("primed")
