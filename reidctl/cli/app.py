"""The Typer application and what every command shares: config options and one-line errors."""

import contextlib
import dataclasses
import functools
import inspect
import signal
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from reidctl.config import Config, load_config, override, override_tracking
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
    A parameter typed with an option group (``ModelOptions``, …) stands for the group's options, declared once.
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

        return app.command(name, help=help_text)(_with_option_groups(wrapper))

    return register


def option_group(cls):
    """Options that several commands share, as a frozen dataclass whose fields are Annotated Typer options: a
    command parameter of this type shows them as options and receives them as one value."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.option_group = True
    return cls


def _with_option_groups(fn):
    """``fn`` with each option-group parameter shown to Typer as the group's fields, and called with the group."""
    signature = inspect.signature(fn, eval_str=True)
    shown, groups = [], {}
    for parameter in signature.parameters.values():
        group = parameter.annotation
        if not getattr(group, "option_group", False):
            shown.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        hints = typing.get_type_hints(group, include_extras=True)
        fields = [field.name for field in dataclasses.fields(group)]
        groups[parameter.name] = (group, fields)
        shown += [inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=hints[field])
                  for field in fields]
    if not groups:
        return fn
    names = [parameter.name for parameter in shown]
    assert len(names) == len(set(names)), f"{fn.__name__}: an option group repeats an option name"

    @functools.wraps(fn)
    def grouped(**kwargs):
        for name, (group, fields) in groups.items():
            kwargs[name] = group(**{field: kwargs.pop(field) for field in fields})
        return fn(**kwargs)

    grouped.__signature__ = signature.replace(parameters=shown)
    grouped.__annotations__ = {parameter.name: parameter.annotation for parameter in shown}
    del grouped.__wrapped__  # Typer reads the signature above, not fn's
    return grouped


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


@option_group
class ModelOptions:
    """The model a command builds: a config file, and the checkpoint and input size on top of it."""

    config: ConfigOpt = None
    model: ModelOpt = None
    model_type: ModelTypeOpt = None
    num_classes: NumClassesOpt = None
    test_size: TestSizeOpt = None

    def load(self, inference: "InferenceOptions | None" = None, **extra) -> Config:
        """The config file (or the built-in defaults) with these options, ``inference``'s and ``extra``'s
        detection settings applied (validated)."""
        return self.apply(load_config(self.config, warn), inference, **extra)

    def apply(self, base: Config, inference: "InferenceOptions | None" = None, **extra) -> Config:
        """``base`` with these options, ``inference``'s and ``extra``'s detection settings applied (validated)."""
        inference = inference or InferenceOptions()
        return override(
            base,
            model_path=str(self.model) if self.model else None,
            model_type=self.model_type,
            num_classes=self.num_classes,
            test_size=parse_size(self.test_size) if self.test_size else None,
            device=inference.device,
            conf_threshold=inference.conf,
            nms_threshold=inference.nms,
            fp16=inference.fp16,
            **extra,
        )


@option_group
class InferenceOptions:
    """Where and how the model runs."""

    device: DeviceOpt = None
    conf: ConfOpt = None
    nms: NmsOpt = None
    fp16: Fp16Opt = None


@option_group
class TrackingOptions:
    """ByteTrack's settings (the config's tracking: section)."""

    track_thresh: TrackThreshOpt = None
    track_buffer: TrackBufferOpt = None
    match_thresh: MatchThreshOpt = None
    low_thresh: LowThreshOpt = None
    min_box_area: MinBoxAreaOpt = None
    aspect_ratio_thresh: AspectRatioThreshOpt = None
    mot20: Mot20Opt = None

    def apply(self, config: Config) -> Config:
        return override_tracking(config, **dataclasses.asdict(self))
