"""`reidctl setup-triton`: write the Triton model repository; start, stop or check the bundled server."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli.app import (
    InferenceOptions,
    ModelOptions,
    command,
    console,
    warn,
)
from reidctl.errors import ReidctlError
from reidctl.triton.compose import DEFAULT_IMAGE


def _endpoints(state) -> str:
    from reidctl.io.cores import cpu_list_text

    cores = f"; on CPUs {cpu_list_text(state.cpus)}" if state.cpus else ""
    return (f"gRPC {state.host}:{state.grpc_port}, HTTP {state.host}:{state.http_port}, metrics "
            f"{state.host}:{state.metrics_port} (listening on {state.listen}{cores})")


def _print_status(status, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(status.to_dict()))
        return
    state = status.state
    if state is None:
        console.print(
            f"no Triton server is running for {status.repository} (start one with `reidctl setup-triton --start`)"
        )
        return
    from reidctl.triton.server import reason_line

    console.print(
        f"Triton server (pid {state.pid}) {'ready' if status.ready else 'NOT ready'}: {_endpoints(state)}; log "
        f"{state.log}"
    )
    table = Table(title=f"Models in {status.repository}")
    for column in ("Model", "Version", "State", "Reason"):
        table.add_column(column)
    for model in status.model_states:
        table.add_row(
            model.get("name", ""),
            model.get("version", "-"),
            model.get("state", "not loaded"),
            reason_line(model["reason"]) if model.get("reason") else "",
        )
    console.print(table)


def _print_written(repository: Path, written) -> None:
    table = Table(title=f"Triton model repository {repository}")
    table.add_column("File")
    table.add_column("What")
    for item in written:
        table.add_row(str(item.path), item.what)
    console.print(table)


@command(
    "setup-triton",
    "Write the Triton model repository (TensorRT and PyTorch models, docker-compose.yml); "
    "start, stop or check the bundled server.",
)
def setup_triton_command(
    repository: Annotated[
        Optional[Path],
        typer.Option("--repository", "-r", help="Model repository directory (default: detection.triton.repository)."),
    ] = None,
    engine: Annotated[
        Optional[Path],
        typer.Option(
            "--engine",
            help="TensorRT engine copied to bytetrack_tensorrt/1/model.plan "
                 "(default: detection.tensorrt.engine_path if it exists).",
        ),
    ] = None,
    start: Annotated[
        bool,
        typer.Option(
            "--start",
            help="After writing, start the bundled Triton server in the background "
                 "(its files are installed into the cache on first use).",
        ),
    ] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the bundled server started for this repository (writes nothing).")
    ] = False,
    status: Annotated[
        bool,
        typer.Option(
            "--status", help="Show whether the bundled server runs, its ports and its models (writes nothing)."
        ),
    ] = False,
    max_batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--max-batch-size",
            min=1,
            help="Largest batch the server runs: the bundled model's own batches and the dynamic batcher's "
            "(default: detection.triton.max_batch_size).",
        ),
    ] = None,
    http_port: Annotated[
        Optional[int],
        typer.Option("--http-port", min=1, max=65535, help="HTTP port (default: detection.triton.http_port, 8100)."),
    ] = None,
    grpc_port: Annotated[
        Optional[int],
        typer.Option("--grpc-port", min=1, max=65535, help="gRPC port (default: detection.triton.grpc_port, 8101)."),
    ] = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Prometheus metrics port (default: detection.triton.metrics_port, 8102).",
        ),
    ] = None,
    gpus: Annotated[
        Optional[str],
        typer.Option(
            "--gpus",
            help="GPUs the models' instance groups name, each with detection.triton.instances instances: "
            "'all' (the GPUs visible here) or ids such as 0,1 "
            "(default: detection.triton.gpus; unset, Triton places them on every GPU it sees).",
        ),
    ] = None,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            min=1,
            help="Servers in docker-compose.yml, "
            "replica i on GPU i and on the configured ports + 10*i (gRPC 8101, 8111, 8121...); "
            "the bundled server stays one.",
        ),
    ] = 1,
    listen: Annotated[
        Optional[str],
        typer.Option(
            "--listen",
            metavar="ADDRESS",
            help="Address the bundled server and docker-compose.yml's ports listen on "
            "(default: detection.triton.listen, 127.0.0.1: this host only). "
            "0.0.0.0 exposes inference, health, statistics and metrics to every network this host is on "
            "(said with a warning); loading models and shared memory still need the server's key.",
        ),
    ] = None,
    cpus: Annotated[
        Optional[str],
        typer.Option(
            "--cpus",
            metavar="LIST",
            help="With --start: CPU cores the bundled server runs on, every thread of it (a Linux CPU list such as "
            "0-3; default: detection.triton.server_cpus, none: every core). detect through it keeps to the other "
            "cores. For a host where other work must stay off the server's cores: on a 16-core GPU host sharing "
            "every core dropped fewer frames (docs/PERFORMANCE.md).",
        ),
    ] = None,
    image: Annotated[str, typer.Option("--image", help="NGC Triton image for docker-compose.yml.")] = DEFAULT_IMAGE,
    compile_model: Annotated[
        Optional[bool],
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the python model: a faster model step, for a longer server start while it compiles "
                 "(docs/PERFORMANCE.md, figures behind choices). Default: on for a GPU instance, else "
                 "detection.compile.",
        ),
    ] = None,
    startup_timeout: Annotated[
        float,
        typer.Option(
            "--startup-timeout",
            min=1,
            help="Seconds to wait for the server to become ready (model loading and compilation included).",
        ),
    ] = 300.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print --status as JSON.")] = False,
    model_options: ModelOptions = ModelOptions(),
    inference: InferenceOptions = InferenceOptions(),
) -> None:
    from reidctl.triton.setup import setup_triton

    if sum((start, stop, status)) > 1:
        raise ReidctlError("choose one of --start, --stop and --status")
    ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
    triton = {"max_batch_size": max_batch_size, "gpus": gpus, "listen": listen, "server_cpus": cpus, **ports}
    cfg = model_options.load(inference, triton=triton)
    action = "status" if status else "stop" if stop else "start" if start else None
    spinner = console.status("starting Triton server")  # shown once the start reports progress

    def on_progress(message: str) -> None:
        spinner.start()
        spinner.update(f"starting Triton server: {message}")

    try:
        done = setup_triton(cfg, repository, action, engine, image, replicas, compile_model, startup_timeout,
                            on_written=_print_written, on_progress=on_progress, warn=warn)  # fmt: skip
    finally:
        spinner.stop()
    repo, server = done.repository, done.server
    if done.done == "status":
        _print_status(done.status, json_output)
    elif done.done == "stopped":
        console.print(
            f"stopped Triton server (pid {server.pid})"
            if server
            else f"no Triton server is running for {repo.resolve()}"
        )
    elif done.done == "running":
        console.print(f"Triton server already running (pid {server.pid}) for {server.repository}: {_endpoints(server)}")
    elif done.done == "written":
        console.print("start the bundled server with `reidctl setup-triton --start`, or NVIDIA's container: "
                      f"cd {repo} && docker compose up -d")  # fmt: skip
    else:
        console.print(
            f"Triton server ready (pid {server.pid}) serving {', '.join(server.models)}: {_endpoints(server)}"
        )
        console.print(f"log: {server.log}; stop it with `reidctl setup-triton --stop`")
