"""The Typer application and what every command shares: config options and one-line errors."""

import contextlib
import functools
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from reidctl.config import Config, load_config, override
from reidctl.errors import ReidctlError, Terminated

if TYPE_CHECKING:  # imported when a progress display is made
    from rich.progress import Progress

app = typer.Typer(
    name="reidctl",
    help="Person detection (ByteTrack YOLOX) for multi-camera ReID: convert, deploy, measure and choose a backend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _console(stderr: bool = False) -> Console:
    """A terminal's width where there is one; in a pipe or log no width at all (Rich would assume 80 columns and
    cut table cells, numbers too): every table takes its natural width."""
    terminal = Console(stderr=stderr)
    return terminal if terminal.is_terminal else Console(stderr=stderr, width=UNBOUNDED_WIDTH)


UNBOUNDED_WIDTH = 100_000
console = _console()
err_console = _console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from reidctl import __version__

        console.print(f"reidctl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Person detection (ByteTrack YOLOX) for multi-camera ReID: convert, deploy, measure and choose a backend."""


EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """One line on stderr, non-zero exit: how every user-facing failure ends."""
    # Escaped: messages hold paths and hints such as 'reidctl[tensorrt]' that are not Rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """A warning line on stderr, printed as written (no Rich markup: messages hold paths and 'pkg[extra]')."""
    err_console.print(message, style="yellow", markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def live_progress(*columns) -> Iterator["Progress"]:
    """A Rich progress display that its callback starts with the first task: a command that fails before any
    progress leaves no empty display behind."""
    from rich.progress import Progress

    progress = Progress(*columns, console=console, transient=False)
    try:
        yield progress
    finally:
        if progress.live.is_started:
            progress.stop()


def _terminate(signum, frame) -> None:
    raise Terminated()


def command(name: str, help_text: str):
    """Register a CLI command whose ReidctlError becomes a one-line error instead of a traceback.

    SIGTERM is handled as Ctrl-C (raised in the main thread), so a stopped command cleans up as after Ctrl-C.
    """

    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            in_main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
            try:
                return fn(*args, **kwargs)
            except ReidctlError as exc:
                fail(str(exc))
            except KeyboardInterrupt as exc:
                terminated = isinstance(exc, Terminated)
                err_console.print("terminated" if terminated else "interrupted")
                raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
            finally:
                if in_main:
                    signal.signal(signal.SIGTERM, previous)

        return app.command(name, help=help_text)(wrapper)

    return register


# Options shared by the commands that build a detector. None means "take the config's value".
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--config", "-c", help="YAML config (default: configs/config.yaml if present, else built-in defaults)."
    ),
]
ModelOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--model",
        "-m",
        help="ByteTrack/YOLOX checkpoint (.pth.tar); overrides detection.model_path. "
             "Without one the weights are untrained.",
    ),
]
ModelTypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model-type", help="nano, tiny, s, m, l, x, mot17 (= x, 1 class) or auto (infer from the checkpoint)."
    ),
]
NumClassesOpt = Annotated[
    Optional[int],
    typer.Option(
        "--num-classes", help="Class count the checkpoint must have (default: from model type or checkpoint)."
    ),
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        help="auto, cpu, cuda, cuda:N, a list (cuda:0,1) or all (every visible GPU). "
        "A list runs one runner per device and spreads batches across them "
        "(in-process backends; cpu,cpu exercises this without a GPU).",
    ),
]
TestSizeOpt = Annotated[
    Optional[str], typer.Option("--test-size", help="Network input HEIGHTxWIDTH, multiples of 32 (e.g. 640x640).")
]
ConfOpt = Annotated[Optional[float], typer.Option("--conf", help="Score threshold (objectness x class confidence).")]
NmsOpt = Annotated[Optional[float], typer.Option("--nms", help="IoU threshold of class-aware NMS.")]
Fp16Opt = Annotated[
    Optional[bool], typer.Option("--fp16/--fp32", help="Half precision on the GPU (the CPU always runs fp32).")
]

# ByteTrack's options (the tracking: section of the config), shared by `track` and `detect --track`.
TrackThreshOpt = Annotated[
    Optional[float], typer.Option("--track-thresh", help="High-score threshold; new tracks need it + 0.1.")
]
TrackBufferOpt = Annotated[
    Optional[int], typer.Option("--track-buffer", help="Frames a lost track is kept, at 30 FPS.")
]
MatchThreshOpt = Annotated[
    Optional[float], typer.Option("--match-thresh", help="IoU-distance limit of the first association.")
]
LowThreshOpt = Annotated[
    Optional[float], typer.Option("--low-thresh", help="Lower end of the low-score band (second association).")
]
MinBoxAreaOpt = Annotated[Optional[float], typer.Option("--min-box-area", help="Written tracks: box area above this.")]
AspectRatioThreshOpt = Annotated[
    Optional[float], typer.Option("--aspect-ratio-thresh", help="Written tracks: width / height at most this.")
]
Mot20Opt = Annotated[
    Optional[bool], typer.Option("--mot20/--no-mot20", help="IoU alone, without fusing the detection score.")
]


def parse_size(text: str) -> list[int]:
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ReidctlError(f"size must look like 640x640, got '{text}'")
    return parts


def build_config(config: Optional[Path] = None, *model_options, **extra) -> Config:
    """The config file with the command line's overrides applied (validated): the model options in
    ``with_model_options``' order, then any other detection settings by name."""
    return with_model_options(load_config(config, warn), *model_options, **extra)


def with_model_options(
    base: Config,
    model: Optional[Path] = None,
    model_type: Optional[str] = None,
    num_classes: Optional[int] = None,
    device: Optional[str] = None,
    test_size: Optional[str] = None,
    conf: Optional[float] = None,
    nms: Optional[float] = None,
    fp16: Optional[bool] = None,
    **extra,
) -> Config:
    """``base`` with the command line's model options applied (validated)."""
    return override(
        base,
        model_path=str(model) if model else None,
        model_type=model_type,
        num_classes=num_classes,
        device=device,
        test_size=parse_size(test_size) if test_size else None,
        conf_threshold=conf,
        nms_threshold=nms,
        fp16=fp16,
        **extra,
    )
