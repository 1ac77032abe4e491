"""Cameras for `reidctl detect`: one reader thread per camera decodes on the CPU and hands its frames on.

Readers are threads, not processes: OpenCV releases the GIL while it decodes, so reader threads decode in parallel,
and a frame reaches the detector as a reference instead of a copy between processes (a 1080p frame is 6 MB);
docs/MULTICAMERA.md has the measurement behind this choice (scripts/decode_bench.py).

Two ways to hand frames on:
  lossless   (files read as fast as the detector goes) the reader waits until its last frame was taken: nothing is
             dropped, and the reader decodes the next frame while the detector works on the current one;
  newest     (live sources, and files played at their frame rate with ``realtime``) the camera keeps its newest
             frames, at most ``buffer`` (detection.camera_buffer): when a frame arrives to a full buffer, the oldest
             waiting one is dropped and counted. A batch takes a camera's waiting frames oldest first, so frames stay in
             order; a buffer of 2 lets a step that ran one frame interval late catch up in the next step instead of
             losing a frame.
A live camera that fails (network error, stall past the read timeout, end of stream) reconnects with back-off while
the other cameras go on; a file camera that ends, ends alone.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from reidctl.core.preprocess import letterbox_frame
from reidctl.errors import ReidctlError, describe_error, first_line
from reidctl.io.sources import CameraSpec, Frame, FrameSource, lower_thread_priority

# A run's records grow with every frame and step; a deployment runs for days. Each record keeps its newest entries:
# whole-run figures (latency percentiles, by_second) cover at least the last SAMPLES_KEPT (a camera at 30 FPS: 2.4
# hours), per-stage means the last STAGE_SAMPLES_KEPT.
SAMPLES_KEPT = 1 << 18
STAGE_SAMPLES_KEPT = 4096


def append_kept(samples: array, value: float, kept: int) -> None:
    """Append ``value``; once ``samples`` holds twice ``kept`` entries, drop the oldest ``kept``: at most 2 x ``kept``
    stay, and the cost is one move of ``kept`` entries every ``kept`` appends."""
    samples.append(value)
    if len(samples) >= 2 * kept:
        del samples[:kept]


RECONNECT_FIRST_DELAY_S = 0.25
RECONNECT_MAX_DELAY_S = 8.0
FOLDER_FPS = 30.0  # the rate at which ``realtime`` plays an image folder, which has none of its own


@dataclass
class TimedFrame:
    camera: Camera
    frame: Frame  # the original frame: outputs draw on it
    decoded_at: float  # time.perf_counter() when the reader had it decoded
    canvas: np.ndarray | None = None  # the frame letterboxed to the network input, where the hub asks for it
    ratio: float = 1.0  # the canvas's scale ratio
    ready_at: float = 0.0  # time.perf_counter() when the reader handed it on (letterboxed)


class Hub:
    """What the readers and the detection loops share: one lock over every camera's waiting frames. The batch loops
    wait on ``condition`` (a frame ready, a camera released, the end); a reader that must not drop frames waits on
    its camera's own ``space``. Each change wakes only who it concerns: with one condition for all, every frame put,
    taken or released woke every reader too, each to take the interpreter lock and sleep again."""

    def __init__(self):
        self.lock = threading.RLock()
        self.condition = threading.Condition(self.lock)
        self.stopping = threading.Event()  # stop now: no frame more is taken
        self.closing = threading.Event()  # readers stop; frames already handed on are still detected
        self.failure: str | None = None  # why the run stops early (an error)
        self.cameras: list[Camera] = []
        # Set before the readers start: each reader letterboxes its frames on the CPU to this size right after
        # decoding, in parallel, instead of the detection step (a 1080p frame is 6 MB; its 640x640 canvas 1.2 MB).
        self.letterbox_size: tuple[int, int] | None = None
        # Added to each reader's niceness: under a busy host, a frame being detected or written goes first, and
        # new frames are decoded on what is left (detection.reader_niceness).
        self.reader_niceness = 0
        # A batch loop that finds fewer frames than a full batch waits for more, up to this long after the oldest
        # was handed on (detection.batch_window_ms): fewer, fuller steps (through a server, fewer requests, each
        # with its fixed cost) for at most this much latency. 0: it takes what is ready at once.
        self.batch_window_s = 0.0
        # Each taken frame's wait from its reader's hand-on, in two parts (seconds): behind its camera's frames still
        # in a step (a camera's frames are finished in order), then for a batch loop to take it (the window
        # included). A long first part points at long steps, a long second at loops all busy.
        self.waits_behind_camera = array("d")
        self.waits_for_a_loop = array("d")
        self._next = 0  # round-robin start, so that no camera waits behind the others when batches are full

    def stop(self, failure: str | None = None) -> None:
        """Stop now (an interrupt, or a detection step that failed: its frames are lost anyway)."""
        with self.condition:
            self.stopping.set()
            self._close(failure)

    def fail(self, failure: str) -> None:
        """A camera's error: no camera reads on, but the frames already read are still finished."""
        with self.condition:
            self._close(failure)

    def _close(self, failure: str | None) -> None:
        if failure and self.failure is None:
            self.failure = failure
        self.closing.set()
        self.condition.notify_all()
        for camera in self.cameras:
            camera.space.notify_all()

    def done(self) -> bool:
        """Every camera has ended and no frame waits (call with the condition held)."""
        return all(camera.ended and not camera.waiting for camera in self.cameras)

    def take_batch(self, max_batch: int, timeout_s: float = 0.1) -> list[TimedFrame]:
        """Up to ``max_batch`` waiting frames, oldest first: each ready camera's oldest, then, where room is left,
        the frames behind it (a camera that fell behind catches up in one step, not one frame a step); [] if none
        came in time.

        A camera whose last frames are still being detected (several devices run batches at once) gives none until
        ``release``: each camera's frames are finished in order."""
        with self.condition:
            def ready() -> bool:
                return any(camera.gives_a_frame for camera in self.cameras) \
                    or self.stopping.is_set() or self.done()

            if not self.condition.wait_for(ready, timeout_s):
                return []
            if self.batch_window_s > 0:
                self._wait_for_a_fuller_batch(max_batch)
            if self.stopping.is_set():
                return []
            count = len(self.cameras)
            order = [self.cameras[(self._next + i) % count] for i in range(count)]
            # Cameras first, then take: a frame taken beyond max_batch would be lost.
            chosen = [camera for camera in order if camera.gives_a_frame][:max_batch]
            batch = [camera.take_locked() for camera in chosen]
            for camera in chosen:  # after each camera's first: its later frames follow it in the batch
                while camera.waiting and len(batch) < max_batch:
                    batch.append(camera.take_locked())
            self._record_waits(batch)
            for camera in chosen:
                camera.in_flight = True
                camera.space.notify()
            if chosen:
                self._next = (self.cameras.index(chosen[-1]) + 1) % count
            self.condition.notify_all()
            return batch

    def _record_waits(self, batch: list[TimedFrame]) -> None:
        """(condition held) Each frame's wait, split where its camera was released (see ``waits_behind_camera``)."""
        now = time.perf_counter()
        for item in batch:
            free = max(item.ready_at, item.camera.released_at)
            append_kept(self.waits_behind_camera, free - item.ready_at, SAMPLES_KEPT)
            append_kept(self.waits_for_a_loop, now - free, SAMPLES_KEPT)

    def waits(self, newest: int | None = None) -> dict[str, array]:
        """Copies of the taken frames' waits (the ``newest`` of them; None: all kept), each part by its name."""
        with self.lock:
            return {"behind_its_camera": self.waits_behind_camera[-newest if newest else 0:],
                    "for_a_loop": self.waits_for_a_loop[-newest if newest else 0:]}

    def _wait_for_a_fuller_batch(self, max_batch: int) -> None:
        """(condition held) Wait until ``max_batch`` frames can be taken, the run closes, or the oldest that can be
        taken has waited ``batch_window_s``. The deadline is the frame's, not the loop's: loops waiting at once
        wait for the same frame, and no frame waits longer than the window for company."""
        def takeable() -> list[Camera]:
            return [camera for camera in self.cameras if camera.gives_a_frame]

        def full_or_closing() -> bool:
            return sum(len(camera.waiting) for camera in takeable()) >= max_batch or self.closing.is_set()

        if cameras := takeable():
            oldest = min(camera.waiting[0].ready_at for camera in cameras)
            if (remaining := oldest + self.batch_window_s - time.perf_counter()) > 0:
                self.condition.wait_for(full_or_closing, remaining)

    def release(self, batch: list[TimedFrame]) -> None:
        """The batch's frames are finished: their cameras may give frames again."""
        with self.condition:
            released = time.perf_counter()
            for item in batch:
                item.camera.in_flight = False
                item.camera.released_at = released
            self.condition.notify_all()


class Camera:
    """A named source, its reader thread and its counters."""

    def __init__(self, spec: CameraSpec, source: FrameSource, hub: Hub, open_source: Callable[[], FrameSource],
                 warn: Callable[[str], None], realtime: bool = False, max_frames: int | None = None, buffer: int = 1):
        self.name = spec.name
        self.spec = spec
        self.source = source
        self.hub = hub
        self.live = source.live
        self.lossless = not (self.live or realtime)
        self.paced = realtime and not self.live
        self.fps = source.fps
        self.total = min(source.total, max_frames) if source.total and max_frames else (source.total or max_frames)
        self.max_frames = max_frames
        self._open_source = open_source
        self._warn = warn
        self.waiting: deque[TimedFrame] = deque()  # oldest first
        # Frames a camera that drops may hold; a lossless one hands on the next only once the last was taken.
        self.buffer = 1 if self.lossless else buffer
        self.space = threading.Condition(hub.lock)  # this camera's reader waits here for ``waiting`` to be taken
        self.in_flight = False  # a frame of this camera is being detected (Hub.take_batch until Hub.release)
        self.released_at = 0.0  # when its last frames in a step were finished (perf_counter seconds)
        self.ended = False  # no frame will come any more
        self.state = "running"  # running | reconnecting | ended | failed | stopped
        self.frames = 0  # detected and written
        self.detections = 0
        self.dropped = 0
        self.drop_times = array("d")  # when each dropped frame was replaced (perf_counter seconds)
        self.late_times = array("d")  # when a paced reader handed on a frame over one frame late (behind its clock)
        self.reconnects = 0
        self.latencies = array("d")  # seconds: decoded -> detections back, one per detected frame
        self.decode_seconds = array("d")  # the reader's time per frame: decoding, then letterboxing
        self.letterbox_seconds = array("d")
        self.reader_busy_seconds = 0.0  # both, in total
        self.last_done: float | None = None  # when the last frame's detections were back
        self.started = False
        self._next_index = 0  # a live camera's frame numbers run on across reconnections
        self._thread = threading.Thread(target=self._read, name=f"camera-{self.name}", daemon=True)
        hub.cameras.append(self)

    # -- reader side ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for the reader to end; a reader that never began (the run stopped while the cameras were starting)
        has nothing to wait for."""
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def _read(self) -> None:
        lower_thread_priority(self.hub.reader_niceness)  # a live source reopened here starts its decoders so too
        failed = False
        try:
            while not self._halted():
                reason = self._play(self.source)
                if not self.live or self._halted() or not self._reconnect(reason):
                    break
        except Exception as exc:
            failed = True
            self.hub.fail(f"camera {self.name}: {describe_error(exc)}")
        finally:
            self.source.close()
            with self.hub.condition:
                stopped_early = self.hub.closing.is_set() and not self.ended
                self.state = "failed" if failed else "stopped" if stopped_early else "ended"
                self.ended = True
                self.hub.condition.notify_all()

    def _play(self, source: FrameSource) -> str:
        """Hand on the source's frames until it ends; returns why it ended (a live source's failure)."""
        interval = 1.0 / (self.fps or FOLDER_FPS)
        started = time.perf_counter()
        first_index = None
        try:
            frames = iter(source)
            while (frame := self._decode(frames)) is not None:
                if self.live:
                    frame.index, self._next_index = self._next_index, self._next_index + 1
                elif self.paced:
                    first_index = frame.index if first_index is None else first_index
                    delay = started + (frame.index - first_index) * interval - time.perf_counter()
                    if delay > 0 and self.hub.closing.wait(delay):
                        return "stopped"
                    if delay < -interval:
                        append_kept(self.late_times, time.perf_counter(), SAMPLES_KEPT)
                if not self._put(self._prepare(frame)):
                    return "stopped"
        except ReidctlError:
            raise
        except Exception as exc:
            if not self.live:
                raise
            return first_line(exc)
        return "the stream ended or stalled"

    def _decode(self, frames: Iterator[Frame]) -> Frame | None:
        start = time.perf_counter()
        frame = next(frames, None)
        append_kept(self.decode_seconds, seconds := time.perf_counter() - start, STAGE_SAMPLES_KEPT)
        self.reader_busy_seconds += seconds
        return frame

    def _prepare(self, frame: Frame) -> TimedFrame:
        item = TimedFrame(self, frame, time.perf_counter())
        if self.hub.letterbox_size is not None:
            item.canvas, item.ratio = letterbox_frame(frame.image, self.hub.letterbox_size)
            append_kept(self.letterbox_seconds, seconds := time.perf_counter() - item.decoded_at, STAGE_SAMPLES_KEPT)
            self.reader_busy_seconds += seconds
        return item

    def _put(self, item: TimedFrame) -> bool:
        """Hand one frame on; False once the camera or the run has stopped."""
        with self.hub.condition:
            if self.lossless:
                self.space.wait_for(lambda: not self.waiting or self._halted())
            elif len(self.waiting) >= self.buffer:
                self.waiting.popleft()
                self.dropped += 1
                append_kept(self.drop_times, time.perf_counter(), SAMPLES_KEPT)
            if self._halted():
                return False
            item.ready_at = time.perf_counter()
            self.waiting.append(item)
            self.hub.condition.notify_all()
            return True

    def _halted(self) -> bool:
        return self.hub.closing.is_set() or self.ended

    def _reconnect(self, reason: str) -> bool:
        """Reopen the live source with back-off until it opens (True) or the run stops (False)."""
        self.state = "reconnecting"
        self._warn(f"warning: camera {self.name}: {reason}; reconnecting")
        self.source.close()
        delay = RECONNECT_FIRST_DELAY_S
        while not self.hub.closing.wait(delay):
            try:
                self.source = self._open_source()
            except ReidctlError:
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
                continue
            self.reconnects += 1
            self.state = "running"
            self._warn(f"camera {self.name}: reconnected")
            return True
        return False

    # -- detection side ---------------------------------------------------------------------------------------
    @property
    def gives_a_frame(self) -> bool:
        """(hub lock held) A batch may take a frame of this camera now: one waits, and none of its last is in a
        step."""
        return bool(self.waiting) and not self.in_flight

    def take_locked(self) -> TimedFrame:
        return self.waiting.popleft()

    def record(self, latency_s: float, detections: int, done: float) -> None:
        """One frame finished (written to every output); the camera ends at ``max_frames``."""
        self.frames += 1
        self.detections += detections
        append_kept(self.latencies, latency_s, SAMPLES_KEPT)
        self.last_done = done
        if self.max_frames is not None and self.frames >= self.max_frames:
            with self.hub.condition:
                self.ended = True
                self.waiting.clear()
                self.hub.condition.notify_all()
                self.space.notify_all()

    def recent_latencies(self, count: int = 512) -> np.ndarray:
        return np.array(self.latencies[-count:])  # a slice is a copy: the detection side keeps appending
