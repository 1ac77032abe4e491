"""scripts/perf.py: every declared suite builds its steps, and a detect summary's headline says where drops fell."""

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, project_env, write_video

sys.path.insert(0, str(ROOT / "scripts"))
import perf  # noqa: E402


@pytest.mark.parametrize("suite", sorted(perf.SUITES))
def test_every_suite_plans_its_steps_without_running_them(tmp_path, suite):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "perf.py"), suite, str(tmp_path / "out"),
                          "--dry-run", "--device", "cpu", "--work-dir", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    steps = json.loads((tmp_path / "out" / "summary.json").read_text())["steps"]
    assert steps and all(step["status"] in ("planned", "skipped") for step in steps)
    assert not (tmp_path / "work" / "clips").exists()  # a dry run makes no fixture


def test_pipeline_pytorch_runs_real_time_with_the_defaults_then_one_batch_in_flight_then_readers_not_lowered(tmp_path):
    context = perf.Context(perf.Settings(loads="idle,crowd"), tmp_path, tmp_path, None)
    steps = {step.name: step for step in perf.pipeline_pytorch(context)}
    bench = steps["bench_crowd"].argv  # as many frames as the detect runs read: 16 cameras of 240 frames
    assert bench[bench.index("--iters") + 1] == "3840" and bench[bench.index("--cameras") + 1] == "16"

    def detection(argv: list[str]) -> dict:
        return json.loads(Path(argv[argv.index("-c") + 1]).read_text())["detection"]

    for name in ("detect_pytorch_rt_idle", "detect_pytorch_rt_crowd", "detect_pytorch_rt_crowd_track"):
        default, one, level, two, window = (steps[name + suffix].argv for suffix in (
            "", "_in_flight_1", "_readers_niceness_10", "_camera_buffer_2", "_batch_window_2"))
        assert all("--realtime" in argv for argv in (default, one, level, two, window))
        assert detection(one)["batches_in_flight"] == 1 and detection(level)["reader_niceness"] == 10
        assert detection(two)["camera_buffer"] == 2 and detection(window)["batch_window_ms"] == 2
        assert not {"batches_in_flight", "reader_niceness", "camera_buffer", "batch_window_ms"} & set(
            detection(default))


def test_pipeline_triton_runs_each_request_count_in_real_time_and_flat_out(tmp_path):
    """The in-flight and system shared memory variants change one detection.triton setting alone, in real time and
    flat out alike."""
    context = perf.Context(perf.Settings(loads="crowd"), tmp_path, tmp_path, None)
    served, no_delay, two_instances = perf.pipeline_triton(context)
    steps = {step.name: step.argv for step in served.steps}

    def triton(argv: list[str]) -> dict:
        return json.loads(Path(argv[argv.index("-c") + 1]).read_text())["detection"].get("triton", {})

    # a server of its own with no queue delay: the setting goes to setup-triton, detect runs as with the defaults
    assert triton(no_delay.setup_args) == {"max_queue_delay_ms": 0} and "-c" not in served.setup_args
    assert [step.name for step in no_delay.steps] == ["detect_triton_rt_crowd_queue_delay_0",
                                                      "detect_triton_fast_crowd_queue_delay_0"]
    assert all("-c" not in step.argv for step in no_delay.steps)
    # a server of two instances: the setting goes to setup-triton; detect runs with 2 and 3 requests in flight
    assert triton(two_instances.setup_args) == {"instances": 2}
    two = {step.name: step.argv for step in two_instances.steps}
    assert "-c" not in two["detect_triton_rt_crowd_instances_2"]
    assert triton(two["detect_triton_rt_crowd_instances_2_in_flight_3"]) == {"max_in_flight": 3}
    assert all("--realtime" in argv for argv in two.values())
    assert "--busy-cores" in two["detect_triton_rt_crowd_instances_2_in_flight_3_busy_cores_8"]

    for count in (3, 4, 1):
        real_time, flat_out = (steps[f"detect_triton_{mode}_crowd_in_flight_{count}"] for mode in ("rt", "fast"))
        assert "--realtime" in real_time and "--realtime" not in flat_out
        assert triton(real_time) == triton(flat_out) == {"max_in_flight": count}
    assert "-c" not in steps["detect_triton_fast_crowd"] and "--realtime" in steps["detect_triton_rt_crowd"]
    # in process beside the idle server: pipeline-pytorch's real-time run of the load, as is
    pytorch_suite = {step.name: step.argv for step in perf.pipeline_pytorch(context) if isinstance(step, perf.Step)}
    beside, alone = steps["detect_pytorch_rt_crowd_beside_idle_server"], pytorch_suite["detect_pytorch_rt_crowd"]
    assert beside[:beside.index("--mot")] == alone[:alone.index("--mot")] and "--jsonl" in beside
    # frames through the host's shared memory: detect's setting alone, on the default server
    real_time, flat_out = (steps[f"detect_triton_{mode}_crowd_system_inputs"] for mode in ("rt", "fast"))
    assert "--realtime" in real_time and "--realtime" not in flat_out
    assert triton(real_time) == triton(flat_out) == {"shared_memory": "system"}
    # a 2 ms window for fuller requests: a detect setting, in real time and flat out
    real_time, flat_out = (steps[f"detect_triton_{mode}_crowd_batch_window_2"] for mode in ("rt", "fast"))
    assert "--realtime" in real_time and "--realtime" not in flat_out and triton(real_time) == triton(flat_out) == {}
    assert all(json.loads(Path(argv[argv.index("-c") + 1]).read_text())["detection"]["batch_window_ms"] == 2
               for argv in (real_time, flat_out))


def test_rounds_run_the_chosen_steps_in_turn_each_round_in_its_own_folder_and_the_server_started_once(tmp_path):
    """--rounds 2 of two settings: A B A B, with one start and stop of the server around all four."""
    steps = "detect_triton_rt_crowd,detect_triton_rt_crowd_camera_buffer_2"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "perf.py"), "pipeline-triton", str(tmp_path / "out"),
                          "--dry-run", "--device", "cpu", "--loads", "crowd", "--rounds", "2", "--work-dir",
                          str(tmp_path / "work"), "--steps", steps],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    names = [step["name"] for step in json.loads((tmp_path / "out" / "summary.json").read_text())["steps"]]
    assert names[-6:] == ["triton_crowd_start",
                          "detect_triton_rt_crowd_r1", "detect_triton_rt_crowd_camera_buffer_2_r1",
                          "detect_triton_rt_crowd_r2", "detect_triton_rt_crowd_camera_buffer_2_r2", "triton_crowd_stop"]
    summaries = [line.split("--summary-json ")[1].split()[0] for line in run.stdout.splitlines()
                 if line.startswith("$") and "--summary-json" in line]
    assert summaries == [str(tmp_path / "out" / f"r{n}" / f"detect_triton_rt_crowd{variant}.json")
                         for n in (1, 2) for variant in ("", "_camera_buffer_2")]


def test_a_detect_headline_says_how_many_drops_fell_in_the_first_second_and_the_hosts_worst_second(tmp_path):
    summary = {"limiting_stage": "detection", "fps": 470.0, "dropped": 36, "latency_ms": {"p99": 52.4},
               "mean_batch": 2.27, "detection_load": {"kept_per_frame": 0.0},
               "by_second": {"0": {"dropped": 30}, "1": {"dropped": 6}},
               "wait_ms": {"behind_its_camera": {"p99": 12.5}, "for_a_loop": {"p99": 21.0}}}
    path = tmp_path / "detect.json"
    path.write_text(json.dumps(summary))
    headline = ("470.0 FPS, 36 dropped (30 in second 0), P99 52.4 ms, waits P99 12.5 behind the camera / 21.0 for "
                "a loop ms, batch 2.27, kept 0/frame, busiest detection")
    assert perf.figures(path) == [headline]
    host = {"cores": 16, "cores_busy": 9.5, "cores_stolen": 0.31, "cpu_pressure": 0.12,
            "by_second": {"0": {"cores_busy": 9.0, "cores_stolen": 1.2, "cpu_pressure": 0.05},
                          "1": {"cores_busy": 10.0, "cores_stolen": 0.0, "cpu_pressure": 0.2}}}
    path.write_text(json.dumps({**summary, "host_cpu": host}))
    assert perf.figures(path) == [headline + "; host: busy 9.5 of 16, stolen 0.31 (worst second 1.20), CPU pressure "
                                             "12.0 % (worst second 20.0 %)"]
    path.write_text(json.dumps({**summary, "host_cpu": {**host, "dropped_short_of_cores": 6}}))
    assert perf.figures(path)[0].endswith("CPU pressure 12.0 % (worst second 20.0 %), 6 dropped short of cores")
    # the longest step, and through a server the part its model spent on the step's request
    for server_ms, said in ((None, ""), (3.25, " (3.2 in the server)")):
        path.write_text(json.dumps({**summary, "slowest_steps": [{"ms": 48.0, "server_ms": server_ms}]}))
        assert perf.figures(path) == [headline.replace(" ms, batch", f" ms, longest step 48.0 ms{said}, batch")]


def test_a_gpu_step_is_traced_by_nvidia_smi_while_it_runs_and_the_sampler_ends_with_it(tmp_path, monkeypatch):
    """No GPU here, so a stand-in nvidia-smi (a shell loop printing what it was asked for) takes its place on PATH."""
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\necho "$1"\nwhile true; do echo sample; sleep 0.05; done\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    trace = tmp_path / "step.gpu.csv"
    with perf.gpu_trace(trace, gpus=1):
        deadline = time.monotonic() + 10
        while trace.read_text().count("sample") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = trace.read_text().splitlines()
    assert lines[0] == f"--query-gpu={perf.GPU_TRACE_FIELDS}" and lines.count("sample") >= 2
    time.sleep(0.3)
    assert trace.read_text().splitlines() == lines  # the sampler ended with the step

    untraced = tmp_path / "cpu_step.gpu.csv"
    with perf.gpu_trace(untraced, gpus=0):
        pass
    assert not untraced.exists()


def test_the_start_timeline_traces_a_real_time_detect_tenth_by_tenth(tmp_path, small_config, video_file):
    """scripts/start_timeline.py runs detect itself, hooked into the pipeline: its rows must add up to what detect's
    own summary counted, so a rename in the pipeline that leaves a hook recording nothing fails here."""
    out = tmp_path / "timeline"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "start_timeline.py"), str(out), "--seconds", "20", "--",
         str(video_file), str(video_file), "-c", str(small_config), "--device", "cpu", "--realtime",
         "--mot", str(tmp_path / "mot"), "--no-progress", "--summary-json", str(out / "summary.json")],
        capture_output=True, text=True, timeout=120, check=False, env=project_env())
    assert run.returncode == 0, run.stderr[-2000:]
    timeline = json.loads((out / "timeline.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    rows = timeline["rows"]
    assert [row["t_s"] for row in rows[:3]] == [0.0, 0.1, 0.2]
    assert sum(row["frames"] for row in rows) == sum(step["frames"] for step in timeline["steps"]) == summary["frames"]
    assert sum(row["dropped"] for row in rows) == len(timeline["dropped_s"]) == summary["dropped"]
    assert sum(row["decodes"] for row in rows) == len(timeline["decodes"]) >= summary["frames"]
    assert timeline["host_busy"] and all(0.0 <= share <= 1.0 for _, share in timeline["host_busy"])


def test_a_variant_run_is_detect_with_a_choice_undone_and_refuses_what_it_cannot_undo(tmp_path, small_config,
                                                                                      video_file):
    """scripts/reidctl_variant.py runs reidctl itself: detect with the switch interval, the freeze and the model's
    threads undone, at niceness 3, writes its summary; asking for sleeping GPU waits without NVIDIA's driver is a
    one-line error."""
    def variant(*options, summary=tmp_path / "summary.json"):
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "reidctl_variant.py"), *options, "--", "detect",
             str(video_file), "-c", str(small_config), "--device", "cpu", "--no-output", "--no-progress",
             "--summary-json", str(summary)],
            capture_output=True, text=True, timeout=120, check=False, env=project_env())

    run = variant("--switch-interval-ms", "5", "--setup-collected", "--model-threads-as-is", "--niceness", "3")
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] > 0
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:  # no NVIDIA driver here
        run = variant("--sleeping-waits", summary=tmp_path / "none.json")
        assert run.returncode != 0
        assert run.stderr.strip() == "error: --sleeping-waits needs NVIDIA's driver (libcuda.so.1)"
        assert not (tmp_path / "none.json").exists()


def py_spy_attaches() -> bool:
    """py-spy can read another process's stacks here (a container may forbid ptrace)."""
    program = perf.find_program("py-spy")
    if program is None:
        return False
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        return subprocess.run([program, "dump", "--pid", str(sleeper.pid), "--nonblocking"], capture_output=True,
                              timeout=30, check=False).returncode == 0
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.skipif(not py_spy_attaches(), reason="py-spy (a dev dependency) cannot attach to a process here: "
                                                  "ptrace is not permitted")
def test_the_lock_profile_samples_detect_once_its_cameras_run_and_refuses_a_window_past_the_run(tmp_path,
                                                                                                small_config):
    """scripts/gil_profile.py samples a real-time detect of two cameras for 1 s after their readers started: the
    batch loop (the model on the CPU) is among the threads that held the lock, and the groups' shares add up to the
    share held. A window longer than the run is an error, not shares of a shorter run."""
    clips = [str(write_video(tmp_path / f"cam{n}.avi", frames=20)) for n in (1, 2)]  # 2 s at 10 FPS

    def profile(seconds: int, result: Path):
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "gil_profile.py"), "--seconds", str(seconds), "--json",
             str(result), "--", "detect", *clips, "-c", str(small_config), "--realtime", "--no-output",
             "--no-progress"],
            capture_output=True, text=True, timeout=120, check=False, env=project_env())

    run = profile(1, tmp_path / "lock.json")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "lock.json").read_text())
    groups = {row["group"]: row for row in result["groups"]}
    assert result["ticks"] == 200 and 0 < result["held"] <= 1
    assert groups["batch loops"]["threads"] == 1 and groups["batch loops"]["samples"] > 0
    assert sum(row["share"] for row in groups.values()) == pytest.approx(result["held"], abs=0.01)
    assert perf.figures(tmp_path / "lock.json")[0].startswith(f"interpreter lock held {100 * result['held']:.1f} %")
    run = profile(5, tmp_path / "none.json")
    assert run.returncode != 0 and "the run ended within the 5 s window" in run.stderr
    assert not (tmp_path / "none.json").exists()
