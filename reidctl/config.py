"""The configuration file (`configs/config.yaml`): schema, defaults, validation and CLI overrides.

The schema follows the reference deployment guide (`detection.backend`, `model_path`, `tensorrt:`, `triton:` ...).
Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import errno
import reprlib
import stat
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reidctl.errors import ReidctlError, print_warning

DEFAULT_CONFIG_PATH = Path("configs/config.yaml")
# A config is a few dozen lines: these limits refuse hostile or mistaken files fast, before they cost time or memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 32  # the YAML composer recurses once per level: 100,000 levels overflow the stack
MAX_ALIASES = 32  # aliases share nodes, so a few dozen can stand for billions of values ("billion laughs")
MAX_TEST_SIDE = 4096
MAX_BATCH_WINDOW_MS = 100.0  # a frame held longer for a fuller batch would miss any real-time latency target
# How frames may reach a Triton server on this host (detection.triton.shared_memory)
INPUT_MEMORY = ("auto", "cuda", "system", "none")
DEFAULT_TIMEOUT_S = 5.0  # how long a network source may take to open or to give its next frame
# Values quoted in errors: a bounded repr (a shared-alias structure's full repr would never finish).
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxstring, _QUOTE.maxother = 2, 4, 4, 60, 60


@dataclass
class TensorRTConfig:
    engine_path: str = "models/bytetrack_x_mot17_fp16.trt"
    fp16: bool = True
    workspace: int = 4096  # MiB
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    cuda_graph: bool = True


@dataclass
class TritonConfig:
    # gRPC endpoint, or several (a list or "host:port,host:port"): the client spreads the cameras over them
    url: str | list[str] = "localhost:8101"
    model_name: str = "bytetrack_pytorch"
    model_version: str = ""  # empty = latest
    timeout: float = 10.0  # seconds per request
    verbose: bool = False
    max_batch_size: int = 8
    # Model instances per GPU; more time-slice the GPU between their processes, and each runs slower
    # (docs/PERFORMANCE.md, figures behind choices).
    instances: int = 1
    # GPUs the instance groups name: null = Triton's default (each GPU the server sees), "all" = the GPUs
    # visible where setup-triton runs, or ids such as [0, 1]
    gpus: list[int] | str | None = None
    max_queue_delay_ms: float = 0.5
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    http_port: int = 8100
    grpc_port: int = 8101
    # Also where the client reads the batches the bundled model ran, on a server not started here
    metrics_port: int = 8102
    repository: str = "model_repository"
    # How frames reach a server on this host: "cuda" (a region in the server's GPU memory, uploaded here: the server
    # skips its two host copies of every frame; needs a GPU and cuda-python here, else system, said), "system" (the
    # host's shared memory; true says the same), "none" (false: in the gRPC request, as for a server elsewhere) or
    # "auto" (the default): cuda for the bundled python model on a GPU where this host can, else system
    shared_memory: bool | str = "auto"
    # The address the bundled server (setup-triton --start) and docker-compose.yml's ports listen on: this host only
    # by default; 0.0.0.0 serves every network this host is on
    listen: str = "127.0.0.1"
    # The key of a server not started here (its restricted APIs, e.g. shared memory): the bare key, or the .env
    # that setup-triton writes beside docker-compose.yml. A server started here is found by its port.
    key_file: str | None = None
    # Requests detect keeps in flight to each server, a batch loop each (docs/PERFORMANCE.md, figures behind
    # choices: on two H200 machines of three 2 dropped fewer frames in real time than 3, and 1 or 4 more)
    max_in_flight: int = 2
    # CPU cores (a Linux CPU list, e.g. "0-3") the bundled server started here runs on, all of its threads; detect
    # through it keeps to the other cores. None (the default): every core, shared; 4 or 2 cores of its own dropped
    # more frames on an H200's 16-core host (docs/PERFORMANCE.md, machines I and J)
    server_cpus: str | None = None

    @property
    def input_memory(self) -> str:
        """shared_memory as one of INPUT_MEMORY."""
        if isinstance(self.shared_memory, bool):
            return "system" if self.shared_memory else "none"
        return self.shared_memory

    @property
    def urls(self) -> list[str]:
        """The gRPC endpoints, in the order given."""
        given = self.url.split(",") if isinstance(self.url, str) else self.url
        return [url.strip() for url in given]


@dataclass
class DetectionConfig:
    backend: str = "pytorch"
    model_path: str | None = None  # ByteTrack checkpoint, e.g. models/bytetrack_x_mot17.pth.tar
    # Its ONNX export: what export-onnx writes, build-engine and the onnxruntime backend read (default: the TensorRT
    # engine path with .onnx)
    onnx_path: str | None = None
    # Whether an ONNX export's or engine's output is decoded, for a file without reidctl's metadata (the metadata
    # wins where there is some). None: raw, as ByteTrack's own exports are.
    decoded: bool | None = None
    model_type: str = "mot17"
    num_classes: int | None = None
    conf_threshold: float = 0.01
    nms_threshold: float = 0.7
    # The model's input [height, width]. "test_size" is ByteTrack's name for it, kept for its configs; the code says
    # input size (``input_size`` below, and every function that takes one).
    test_size: list[int] = field(default_factory=lambda: [640, 640])
    fp16: bool = True
    fuse: bool = True
    device: str = "auto"
    cuda_graph: bool = True
    compile: bool = False
    # Batches each GPU runs at once, each on its own runner and CUDA stream: one batch's host work overlaps the
    # next one's model (in-process backends; a CPU runs one)
    batches_in_flight: int = 2
    # Niceness added to the cameras' reader threads and their decoders (Linux): on a busy host the batch loops, the
    # outputs and a local server finish the frames already read before new ones are decoded. 0 (the default) runs
    # them alike: 10 did not drop fewer frames in process (docs/PERFORMANCE.md, figures behind choices)
    reader_niceness: int = 0
    # Frames a live or real-time camera holds for detection; a frame arriving to a full buffer drops the oldest.
    # 1 (the default) keeps only the newest: the least latency. 2 lets a step that ran one frame interval late catch
    # up instead of losing the frame, which then counts in the latency; over both targets (0 dropped, P99 <= 50 ms)
    # neither won (docs/PERFORMANCE.md, figures behind choices)
    camera_buffer: int = 1
    # A batch loop that finds fewer frames waiting than a full batch waits for more, up to this long after the
    # oldest was ready: fewer, fuller steps (through a server, fewer requests, each with its fixed cost) for at most
    # this much latency. 0 (the default) takes what is ready at once: 2 ms made steps fuller and detection less busy
    # through the server, but dropped more frames on one machine of two (docs/PERFORMANCE.md, machines T and U)
    batch_window_ms: float = 0.0
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input (height, width): the key test_size."""
        return int(self.test_size[0]), int(self.test_size[1])


@dataclass
class TrackingConfig:
    """ByteTrack's association (its published defaults and names) and the crops written for ReID."""

    track_thresh: float = 0.5  # high-score detections; a new track needs track_thresh + 0.1
    track_buffer: int = 30  # frames a lost track is kept, at 30 FPS (scaled by the camera's FPS)
    match_thresh: float = 0.8  # IoU-distance limit of the first association
    low_thresh: float = 0.1  # low-score band (low_thresh, track_thresh): second association only
    min_box_area: float = 10.0  # written tracks: w * h above this
    aspect_ratio_thresh: float = 1.6  # written tracks: w / h at most this
    mot20: bool = False  # True: IoU alone (no fusion with the detection score), as ByteTrack on MOT20
    crops_every: int = 10  # ReID crops: every Nth frame of a track (plus its best-scored frame)
    crop_size: list[int] = field(default_factory=lambda: [128, 256])  # [width, height] of a crop


@dataclass
class Config:
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _quote(value) -> str:
    return _QUOTE.repr(value)


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on nesting depth and alias count."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _ConfigLimit(f"uses more than {MAX_ALIASES} YAML aliases")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _ConfigLimit(f"nests deeper than {MAX_NESTING} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _ConfigLimit(Exception):
    """A limit of _LimitedLoader was passed; the message completes 'config file X ...'."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ReidctlError:
                continue
        expected = " or ".join(_type_name(a) for a in args)
        raise ReidctlError(f"config key '{key}': expected {expected}, got {_quote(value)}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ReidctlError(f"config key '{key}': expected a list, got {_quote(value)}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ReidctlError(f"config key '{key}': expected {tp.__name__}, got {_quote(value)}")
    return value


def _build(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ReidctlError(f"config key '{prefix or 'top level'}': expected a mapping, got {_quote(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ReidctlError(f"unknown config key '{prefix + '.' if prefix else ''}{unknown[0]}'")
    values = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}") for k, v in data.items()}
    return cls(**values)


def validate(config: Config) -> Config:
    d = config.detection
    if len(d.test_size) != 2 or any(s <= 0 or s % 32 or s > MAX_TEST_SIDE for s in d.test_size):
        raise ReidctlError(
            f"config key 'detection.test_size': expected [height, width], multiples of 32 up to {MAX_TEST_SIDE}, "
            f"got {_quote(d.test_size)}"
        )
    for key in ("conf_threshold", "nms_threshold"):
        if not 0.0 <= getattr(d, key) <= 1.0:
            raise ReidctlError(f"config key 'detection.{key}': expected a value in [0, 1], got {getattr(d, key)}")
    counts = {"batches_in_flight": d.batches_in_flight, "camera_buffer": d.camera_buffer,
              "triton.max_in_flight": d.triton.max_in_flight}
    for key, count in counts.items():
        if count < 1:
            raise ReidctlError(f"config key 'detection.{key}': expected at least 1, got {count}")
    if not 0 <= d.batch_window_ms <= MAX_BATCH_WINDOW_MS:
        raise ReidctlError(f"config key 'detection.batch_window_ms': expected 0-{MAX_BATCH_WINDOW_MS:g} ms, "
                           f"got {d.batch_window_ms}")
    if not 0 <= d.reader_niceness <= 19:
        raise ReidctlError(f"config key 'detection.reader_niceness': expected 0-19, got {d.reader_niceness}")
    if d.num_classes is not None and d.num_classes < 1:
        raise ReidctlError(f"config key 'detection.num_classes': expected at least 1 class, got {d.num_classes}")
    ports = {"http_port": d.triton.http_port, "grpc_port": d.triton.grpc_port, "metrics_port": d.triton.metrics_port}
    for key, port in ports.items():
        if not 1 <= port <= 65535:
            raise ReidctlError(f"config key 'detection.triton.{key}': expected a port in 1-65535, got {port}")
    if len(set(ports.values())) < len(ports):
        raise ReidctlError(
            "config keys 'detection.triton.http_port', 'grpc_port' and 'metrics_port' (--http-port, --grpc-port, "
            f"--metrics-port): the HTTP, gRPC and metrics ports must differ, got {list(ports.values())}"
        )
    if d.triton.shared_memory not in (True, False, *INPUT_MEMORY):
        raise ReidctlError(
            "config key 'detection.triton.shared_memory': expected auto, cuda, system or none (or true / false), "
            f"got {_quote(d.triton.shared_memory)}"
        )
    urls = d.triton.urls
    if not urls or not all(map(_is_endpoint, urls)) or len(set(urls)) < len(urls):
        raise ReidctlError(
            "config key 'detection.triton.url': expected host:port (port 1-65535), or several distinct ones (a list "
            f"or comma-separated), got {_quote(d.triton.url)}"
        )
    _validate_tracking(config.tracking)
    return config


def _is_endpoint(url: str) -> bool:
    """host:port with a port of 1-65535 (an IPv6 host in brackets: [::1]:8101)."""
    host, sep, port = url.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 1 <= int(port) <= 65535)


def _validate_tracking(t: TrackingConfig) -> None:
    for key in ("track_thresh", "match_thresh", "low_thresh"):
        if not 0.0 <= getattr(t, key) <= 1.0:
            raise ReidctlError(f"config key 'tracking.{key}': expected a value in [0, 1], got {getattr(t, key)}")
    if t.low_thresh >= t.track_thresh:
        raise ReidctlError(
            f"config key 'tracking.low_thresh': expected below tracking.track_thresh ({t.track_thresh}), "
            f"got {t.low_thresh}"
        )
    for key, least in (("track_buffer", 0), ("crops_every", 1)):
        if getattr(t, key) < least:
            raise ReidctlError(f"config key 'tracking.{key}': expected at least {least}, got {getattr(t, key)}")
    if len(t.crop_size) != 2 or any(side < 1 or side > MAX_TEST_SIDE for side in t.crop_size):
        raise ReidctlError(
            f"config key 'tracking.crop_size': expected [width, height], each 1 to {MAX_TEST_SIDE}, "
            f"got {_quote(t.crop_size)}"
        )


# Keys of the ONNX file that once sat under detection.tensorrt, from before ONNX Runtime read that file too.
KEYS_MOVED_FROM_TENSORRT = ("onnx_path", "decoded")


def upgrade_detection(detection: dict, warn: Callable[[str], None] = print_warning) -> dict:
    """A `detection:` mapping with its keys under their names of today: detection.tensorrt.onnx_path and
    detection.tensorrt.decoded become detection.onnx_path and detection.decoded (a warning for each that is set)."""
    tensorrt = detection.get("tensorrt")
    if not isinstance(tensorrt, dict):
        return detection
    upgraded = {**detection, "tensorrt": {k: v for k, v in tensorrt.items() if k not in KEYS_MOVED_FROM_TENSORRT}}
    for key in KEYS_MOVED_FROM_TENSORRT:
        old = tensorrt.get(key)
        if old is None:  # absent, or what records written before the move hold where the key was unset
            continue
        if detection.get(key) not in (None, old):
            raise ReidctlError(f"config keys 'detection.{key}' ({detection[key]}) and 'detection.tensorrt.{key}' "
                               f"({old}) differ: keep detection.{key} alone")
        warn(f"warning: config key 'detection.tensorrt.{key}' is deprecated: use 'detection.{key}'")
        upgraded[key] = old
    return upgraded


def load_config(path: Path | None = None, warn: Callable[[str], None] = print_warning) -> Config:
    """Read a config file; without one, the built-in defaults (or configs/config.yaml if present)."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.is_file():
            return Config()
        path = DEFAULT_CONFIG_PATH
    data = _read_yaml(Path(path))
    if isinstance(data, dict) and isinstance(data.get("detection"), dict):
        data = {**data, "detection": upgrade_detection(data["detection"], warn)}
    return validate(_build(Config, data, ""))


def check_regular_file(path: Path, what: str) -> None:
    """A one-line error naming what ``path`` is when it is not a regular file: missing, a directory, a symlink loop,
    a device or a FIFO (reading those blocks or never ends)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ReidctlError(f"{what} not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReidctlError(f"{what} {path} is a symlink loop") from None
        raise ReidctlError(f"{what} {path} is not readable: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ReidctlError(f"{what} {path} is a directory")
    if not stat.S_ISREG(mode):
        device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if device else "a socket"
        raise ReidctlError(f"{what} {path} is not a regular file ({kind})")


def _read_yaml(path: Path) -> dict:
    """The file's YAML mapping (empty file: {}); anything that is not a small YAML text is a one-line error."""
    check_regular_file(path, "config file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ReidctlError(f"config file {path} is {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ReidctlError(f"config file {path} is not readable: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ReidctlError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_LimitedLoader) or {}  # noqa: S506  a SafeLoader with limits
    except _ConfigLimit as exc:
        raise ReidctlError(f"config file {path} {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ReidctlError(f"config file {path} is not valid YAML{where}") from None


def override(config: Config, **detection_values) -> Config:
    """Apply CLI options on top of the file's detection section, validated: the one way options reach a config.

    None means 'not given'. A section (``tensorrt``, ``triton``) takes a dict of its own keys, likewise.
    """
    given = {k: v for k, v in upgrade_detection(detection_values).items() if v is not None}
    for section in ("tensorrt", "triton"):
        if isinstance(given.get(section), dict):
            values = {k: v for k, v in given[section].items() if v is not None}
            given[section] = dataclasses.replace(getattr(config.detection, section), **values)
    return validate(dataclasses.replace(config, detection=dataclasses.replace(config.detection, **given)))


def override_tracking(config: Config, **tracking_values) -> Config:
    """Apply CLI options on top of the file's tracking section, validated; None means 'not given'."""
    given = {k: v for k, v in tracking_values.items() if v is not None}
    return validate(dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, **given)))


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(config: dict) -> Config:
    """A Config from its dict form (``to_dict``'s, as a bench file records it), validated like a file."""
    return override(Config(), **config.get("detection", {}))
