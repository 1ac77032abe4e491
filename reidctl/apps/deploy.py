"""What deploying a chosen backend takes: its `detection:` section with the batching sized for the cameras, the
snippet for configs/config.yaml, and `recommend --deploy`'s folder (config.yaml, and deploy.sh: the commands that
prepare the backend's artifact, then detect on the cameras). What each backend needs comes from its registry record:
the kind of artifact it runs and the config section that describes it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from reidctl.apps.pipeline import OutputRequest
from reidctl.config import upgrade_detection
from reidctl.core.registry import Artifact, get_backend
from reidctl.errors import ReidctlError
from reidctl.io.atomic import write_text_atomic

# Detection keys every snippet carries (a backend's own keys come from its record).
COMMON_KEYS = ("model_path", "model_type", "test_size", "fp16", "conf_threshold", "nms_threshold", "device")


def triton_batching(cameras: int, measured: dict) -> dict:
    """Dynamic batching for N closed-loop cameras: a batch never exceeds N, so max_batch_size covers N."""
    max_batch = max(int(measured.get("max_batch_size", 1)), 1 << (cameras - 1).bit_length())
    return {
        "max_batch_size": max_batch,
        "max_queue_delay_ms": measured.get("max_queue_delay_ms", 0.5),
        "preferred_batch_sizes": [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch],
    }


def _next_power_of_two(value: int) -> int:
    return 1 << (max(value, 1) - 1).bit_length()


def tensorrt_profile(cameras: int, measured: dict) -> dict:
    """The engine's dynamic-batch profile for N cameras: up to the next power of two >= N, tuned for it."""
    max_batch = max(int(measured.get("max_batch", 1)), _next_power_of_two(cameras))
    return {"min_batch": 1, "opt_batch": max_batch, "max_batch": max_batch}


# How the artifacts that batch to a limit are sized for the cameras, in the section that describes them.
BATCH_SIZING = {Artifact.ENGINE: tensorrt_profile, Artifact.SERVER_MODEL: triton_batching}


def deploy_detection(backend: str, config: dict, cameras: int) -> dict:
    """The full `detection:` section to deploy ``backend`` for ``cameras``: the measured config with the backend set
    and the batching sized for the cameras (Triton's dynamic batcher, TensorRT's batch profile)."""
    measured = upgrade_detection(config.get("detection", {}))
    det = {k: (dict(v) if isinstance(v, dict) else v) for k, v in measured.items()}
    det["backend"] = backend
    record = get_backend(backend)
    if record.artifact in BATCH_SIZING:
        section = det.get(record.config_section, {})
        det[record.config_section] = section | BATCH_SIZING[record.artifact](cameras, section)
    return det


# Modes measured in process with batches across cameras: "batched" in bench files from before detect's pipeline
# replaced bench's micro-batcher.
IN_PROCESS_BATCHED_MODES = ("pipeline", "batched")


def _in_process_note(mode: str | None, max_batch: int | None) -> str:
    """For a choice measured in process: what serves the cameras, and the largest batch it was measured with."""
    if mode not in IN_PROCESS_BATCHED_MODES:
        return ""
    batches = f" (batches of at most {max_batch} frames: detect --max-batch {max_batch})" if max_batch else ""
    return f"# measured in process{batches}: the cameras are served by `reidctl detect`\n"


def config_snippet(backend: str, mode: str | None, config: dict, cameras: int, max_batch: int | None = None) -> str:
    """The `detection:` section to put in configs/config.yaml for ``backend``."""
    full = deploy_detection(backend, config, cameras)
    record = get_backend(backend)
    keys = ("backend", *COMMON_KEYS, *record.config_keys, record.config_section)
    section = {key: full[key] for key in keys if key in full}
    header = "# configs/config.yaml\n" + _in_process_note(mode, max_batch)
    return header + yaml.safe_dump({"detection": section}, sort_keys=False, default_flow_style=None)


DEPLOY_CONFIG = '"$DEPLOY_DIR/config.yaml"'  # deploy.sh finds its config beside itself, wherever it is run from
# What deploy.sh's detect writes, relative to its folder; `recommend --verify` runs the same into a folder of its own.
DEPLOYED_OUTPUTS = {"--mot": "runs/mot", "--jsonl": "runs/detections.jsonl"}


def deployed_outputs(directory: Path) -> OutputRequest:
    """The outputs of deploy.sh's detect, written under ``directory``."""
    return OutputRequest(mot=directory / DEPLOYED_OUTPUTS["--mot"], jsonl=directory / DEPLOYED_OUTPUTS["--jsonl"])


def deploy_commands(backend: str, config_arg: str, detection: dict, sources: list[str] | None = None) -> list[str]:
    """What to run, in order, to deploy ``backend``: ``config_arg`` is the config path as a shell word; every value
    taken from the config or a bench file is quoted. Without ``sources``, detect takes the script's arguments.
    Every CLI option deploy.sh passes is spelled here (tests check each against the CLI)."""
    record = get_backend(backend)
    section = detection.get(record.config_section, {}) if record.config_section else {}
    commands = []
    if record.artifact is Artifact.ONNX:
        commands.append(f"reidctl export-onnx -c {config_arg}  # the ONNX file detection.onnx_path names")
    if record.artifact is Artifact.ENGINE:
        fp16 = ["--fp16"] if section.get("fp16", True) else []
        commands.append(f"reidctl export-onnx -c {config_arg} {shlex.join(fp16)}".rstrip())
        batches = ["--min-batch", section["min_batch"], "--opt-batch", section["opt_batch"],
                   "--max-batch", section["max_batch"]]
        commands.append(f"reidctl build-engine -c {config_arg} {_shell_words(*(fp16 or ['--fp32']), *batches)}")
    if record.artifact is Artifact.SERVER_MODEL:
        commands.append(
            f"reidctl setup-triton -c {config_arg} {_shell_words('--max-batch-size', section['max_batch_size'])} "
            f"--start  # queue delay and preferred batch sizes: from the config"
        )
    cameras = _shell_words(*sources) if sources else '"$@"'
    # The cameras in real time and the outputs below the deploy folder: what `recommend --verify` runs.
    outputs = " ".join(f'{option} "$DEPLOY_DIR/{path}"' for option, path in DEPLOYED_OUTPUTS.items())
    commands.append(f"reidctl detect {cameras} {_shell_words('--backend', backend)} -c {config_arg} --realtime "
                    f"{outputs}")
    return commands


def _shell_words(*values) -> str:
    return shlex.join(str(value) for value in values)


def _comment(line: str) -> str:
    """A shell comment of one line, whatever ``line`` holds."""
    return "# " + " ".join(str(line).split())


DEPLOY_FILES = ("config.yaml", "deploy.sh")  # what --deploy writes into its folder


def write_deploy(rec, directory: Path) -> tuple[Path, Path]:
    """``directory``/config.yaml (loads with --config) and ``directory``/deploy.sh (the commands, in order; the
    cameras as its arguments) for ``rec``, a Recommendation (apps/recommend.py, which imports this module)."""
    if not rec.choice or rec.deploy_config is None:
        raise ReidctlError("nothing to deploy: no backend was chosen")
    directory = Path(directory)
    config_path, script_path = (directory / name for name in DEPLOY_FILES)
    need = rec.need
    header = (
        f"# reidctl recommend: {need.cameras} camera(s) x {need.fps:g} FPS, P99 <= {need.latency_ms:g} ms "
        f"-> {rec.choice}{' (not measured)' if not rec.measured else ''}\n"
    ) + _in_process_note(rec.mode, rec.max_batch)
    write_text_atomic(config_path, header + yaml.safe_dump(rec.deploy_config, sort_keys=False, default_flow_style=None))
    commands = deploy_commands(rec.choice, DEPLOY_CONFIG, rec.deploy_config["detection"])
    usage = (f"usage: sh deploy.sh CAMERA [CAMERA ...]: the {need.cameras} camera(s), each a video file, camera "
             "index or RTSP/HTTP URL (NAME=URL names it)")
    script = [
        "#!/bin/sh",
        *(_comment(line) for line in rec.reasoning),
        "set -e",
        'DEPLOY_DIR=$(cd "$(dirname "$0")" && pwd)',
        f'[ "$#" -gt 0 ] || {{ echo {shlex.quote(usage)} >&2; exit 2; }}',
        *commands,
    ]
    write_text_atomic(script_path, "\n".join(script) + "\n")
    return config_path, script_path
