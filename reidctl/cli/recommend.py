"""`reidctl recommend`: a backend for N cameras at F FPS, from bench results or the reference decision tree; the
most cameras this machine serves, the check of the choice, and what to deploy.

Only light modules at the top (`reidctl --help` must not import torch): the recommendation and measurement code is
imported inside the command.
"""

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.syntax import Syntax

from reidctl.apps.bench_report import DEFAULT_BENCH_PATH, serving_devices
from reidctl.cli.app import (
    InferenceOptions,
    ModelOptions,
    command,
    console,
    fail,
    parse_size,
)
from reidctl.cli.tables import capacity_table, summary_table, verdict_table
from reidctl.config import config_from_dict, load_config, to_dict
from reidctl.io.atomic import write_text_atomic
from reidctl.io.cores import short_of_cores_warning
from reidctl.io.paths import refuse_foreign_files, refuse_shared_paths

EXIT_VERIFY_FAILED = 1  # a measured FAIL; bad input exits 2


def _load_line(summary: dict) -> str:
    """The detection load a run saw, and a warning where the model found nothing to keep."""
    load = summary.get("detection_load") or {}
    kept, candidates = load.get("kept_per_frame"), load.get("candidates_per_frame")
    seen = f"detection load: {kept or 0:.0f} kept rows" + (f", {candidates:.0f} candidates" if candidates else "")
    if not kept:
        return seen + (" a frame. [yellow]Measured on an idle model: a crowded scene writes more rows; verify with "
                       "your checkpoint and scenes, or a load checkpoint (scripts/make_load_checkpoints.py)[/yellow]")
    return seen + " a frame"


def _print_verdict(check) -> None:
    """--verify's verdict line: PASS or FAIL with what deploy.sh's pipeline measured."""
    need = check.need
    if check.run is None:
        console.print(
            f"[bold red]FAIL[/bold red]: no backend was chosen for {need.cameras} camera(s) x "
            f"{need.fps:g} FPS: nothing to verify"
        )
        return
    result, summary = check.run.result, check.run.summary
    verdict = "[bold green]PASS[/bold green]" if check.passed else "[bold red]FAIL[/bold red]"
    busy = ", ".join(f"{name} {share:.0%}" for name, share in summary["busy"].items())
    console.print(
        f"{verdict}: {check.backend} (detect's pipeline, outputs on) served {need.cameras} camera(s) at {need.fps:g} "
        f"FPS on this machine ({check.cameras_from}): P99 {result.latency.p99_ms:.1f} ms "
        f"{'<=' if result.latency.p99_ms <= need.latency_ms else '>'} {need.latency_ms:g} ms, {result.late} late, "
        f"{result.dropped} dropped, {result.throughput_fps:.1f} of {need.total_fps:.1f} FPS; busiest: "
        f"{summary['limiting_stage']} ({busy}); {_load_line(summary)}"
        + (f"; {short}" if (short := short_of_cores_warning(
            summary, latency_missed=result.latency.p99_ms > need.latency_ms)) else ""),
        soft_wrap=True,
    )


@command(
    "recommend",
    "Recommend a backend for N cameras at F FPS within a latency budget, "
    "from `reidctl bench` results (or the reference decision tree); "
    "find the most cameras this machine serves, verify, write what to deploy.",
)
def recommend_command(
    cameras: Annotated[int, typer.Option("--cameras", help="Number of cameras to serve.")] = 1,
    fps: Annotated[float, typer.Option("--fps", help="Frames per second each camera must get.")] = 30.0,
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Per-request P99 latency budget in ms.")] = 100.0,
    bench_file: Annotated[
        Optional[Path],
        typer.Option(
            "--bench",
            help=f"Bench result JSON (default: {DEFAULT_BENCH_PATH} if present; "
                 "without one the reference decision tree answers).",
        ),
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the recommendation as JSON.")] = None,
    max_cameras: Annotated[
        bool,
        typer.Option(
            "--max-cameras",
            help="Search, per backend here, the most cameras at --fps "
            "that keep P99 within --latency-ms with no frame dropped, each run what deploy.sh runs "
            "(detect's readers, batch loops and outputs on generated clips or --sources, in real time; "
            "doubling, then bisection), and recommend from those runs too.",
        ),
    ] = False,
    backends: Annotated[
        str,
        typer.Option(
            "--backends", "-b", help="Backends --max-cameras searches: 'all' (those that can run here) or a comma list."
        ),
    ] = "all",
    camera_limit: Annotated[int, typer.Option("--camera-limit", min=1, help="Most cameras --max-cameras tries.")] = 64,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Run what deploy.sh runs "
            "(detect with its outputs, the cameras in real time: generated clips at --resolution, or --sources) "
            "at --cameras x --fps on this machine; "
            "print PASS or FAIL with the measured P99, dropped frames, the busiest stage and the detection load, "
            "and exit 1 on FAIL.",
        ),
    ] = False,
    deploy: Annotated[
        Optional[Path],
        typer.Option(
            "--deploy",
            help="Write what to deploy into this folder: config.yaml (loads with --config) and deploy.sh CAMERA... "
            "(setup-triton / build-engine with the chosen batching, then the detect that --verify runs).",
        ),
    ] = None,
    seconds: Annotated[
        float,
        typer.Option("--seconds", min=0.1, help="Seconds of camera time in each run of --max-cameras and --verify."),
    ] = 5.0,
    resolution: Annotated[
        str,
        typer.Option(
            "--resolution",
            help="HxW of the clip --verify and --max-cameras generate for every camera, "
            "when --sources is not given: the cameras' resolution.",
        ),
    ] = "1080x1920",
    sources_file: Annotated[
        Optional[Path],
        typer.Option(
            "--sources",
            help="--verify and --max-cameras run these cameras (detect's --sources format: one per line, NAME=URL), "
            "repeated up to the camera count, instead of generated clips.",
        ),
    ] = None,
    model_options: ModelOptions = ModelOptions(),
    inference: InferenceOptions = InferenceOptions(),
) -> None:
    """The model options apply on top of the bench file's configuration (or --config's, without one)."""
    from reidctl.apps.bench_report import find_bench, load_report
    from reidctl.apps.capacity import CameraPlan, search_capacity, verify_choice
    from reidctl.apps.deploy import DEPLOY_FILES, DEPLOYED_OUTPUTS, write_deploy
    from reidctl.apps.recommend import Need, recommend
    from reidctl.io.sources import read_source_list

    need = Need(cameras, fps, latency_ms).validate()
    path = find_bench(bench_file)
    deploy_files = [("--deploy", deploy / name) for name in DEPLOY_FILES] if deploy else []
    refuse_shared_paths([("--json", json_path), *deploy_files],
                        [("--bench", path), ("--config", model_options.config), ("--model", model_options.model),
                         ("--sources", sources_file)])
    if deploy:
        outputs = {Path(path).parts[0] for path in DEPLOYED_OUTPUTS.values()}  # what its deploy.sh wrote there
        refuse_foreign_files(deploy, [*DEPLOY_FILES, *outputs], "--deploy")
    report = load_report(path) if path else None
    base = config_from_dict(report.config) if report else load_config(model_options.config)
    config_dict = to_dict(model_options.apply(base, inference))
    if report:
        report.config = config_dict  # what is deployed and verified: the measured setup with the options given here
    plan = CameraPlan(parse_size(resolution), seconds, read_source_list(sources_file) if sources_file else None)
    # --verify and --max-cameras generate their clips and write their outputs here; all of it goes at the end
    with tempfile.TemporaryDirectory(prefix="reidctl-recommend-") as work_dir:
        work = Path(work_dir)
        if max_cameras:
            with console.status("capacity search") as spinner:

                def on_run(backend, run):
                    spinner.update(
                        f"capacity search: {backend}, {run.cameras} camera(s): "
                        f"P99 {run.latency.p99_ms:.1f} ms, {run.dropped} dropped"
                    )

                search = search_capacity(config_from_dict(config_dict), need, plan, backends, work, camera_limit,
                                         report, on_run)  # fmt: skip
            console.print(capacity_table(search.results, need.fps, need.latency_ms))
            best = search.best
            if best:
                environment = search.searched.environment
                subject, verb = serving_devices(environment)
                more = " or more" if best.outcome.at_limit else ""
                console.print(
                    f"[bold]{subject} ({escape(environment['gpu']['name'])}) {verb} up to {best.outcome.cameras}{more} "
                    f"camera(s) at {need.fps:g} FPS within {need.latency_ms:g} ms on {best.backend}.[/bold]",
                    soft_wrap=True,
                )
            report = search.report
        source = f"{path or 'no bench file'} and this machine's capacity search" if max_cameras else str(path)
        rec = recommend(need, report, config_dict, source=source)
        if not rec.measured:
            console.print(summary_table(rec.scenario))
        console.print(verdict_table(rec))
        for line in rec.reasoning:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if rec.choice:
            mode = f" ({rec.mode})" if rec.mode else ""
            caveat = "" if rec.measured else " [yellow]- not measured[/yellow]"
            console.print(f"[bold]Recommended: {rec.choice}{mode}[/bold]{caveat}")
            console.print(Syntax(rec.config_snippet, "yaml", theme="ansi_dark", background_color="default"))
        deployed = None
        if deploy and rec.choice:
            deployed, script = write_deploy(rec, deploy)
            console.print(f"wrote {deployed} and {script}", soft_wrap=True)
        if json_path:
            write_text_atomic(json_path, json.dumps(rec.to_dict(), indent=2))
            console.print(f"wrote {json_path}", soft_wrap=True)
        if verify:
            with console.status("verifying") as spinner:

                def on_start(check):
                    spinner.update(f"verifying {check.backend}: deploy.sh's detect on {check.cameras_from}")

                check = verify_choice(rec, plan, work, deployed, on_start)
            _print_verdict(check)
            if not check.passed:
                raise typer.Exit(EXIT_VERIFY_FAILED)
        if deploy and not rec.choice:
            fail(f"nothing written to {deploy}: no backend meets the need")
