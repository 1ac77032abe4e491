"""What deploying a backend takes: the batching sized for the cameras, and deploy.sh's commands, quoted and spelled
as the CLI takes them."""

import shlex

import typer
from typer.testing import CliRunner

from reidctl.apps.deploy import DEPLOY_CONFIG, deploy_commands, deploy_detection
from reidctl.cli import app
from reidctl.config import Config, load_config, to_dict
from reidctl.core.registry import registered_backends

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def cli_options(command: str) -> set[str]:
    """Every option ``reidctl command --help`` lists."""
    click_command = typer.main.get_command(app).commands[command]
    return {option for param in click_command.params for option in (*param.opts, *param.secondary_opts)}


def test_every_option_deploy_sh_passes_is_one_the_cli_takes():
    emitted = []
    for name in registered_backends():
        for fp16 in (True, False):  # a TensorRT engine's precision is an option of its own
            config = to_dict(Config())
            config["detection"]["tensorrt"]["fp16"] = fp16
            emitted += deploy_commands(name, DEPLOY_CONFIG, deploy_detection(name, config, cameras=4))
    commands = {words[1] for words in map(shlex.split, emitted)}
    assert commands == {"export-onnx", "build-engine", "setup-triton", "detect"}  # every backend's artifact prepared
    for line in emitted:
        words = shlex.split(line, comments=True)
        unknown = {word for word in words[2:] if word.startswith("-")} - cli_options(words[1])
        assert not unknown, f"deploy.sh passes {sorted(unknown)} to `reidctl {words[1]}`, which does not take them"


def test_deploy_quotes_what_comes_from_a_bench_file(small_config):
    """Values from a bench file (which anyone may hand over) reach deploy.sh only as quoted words or comments."""
    detection = deploy_detection("triton", to_dict(load_config(small_config)), cameras=4)
    detection["triton"]["max_batch_size"] = "8; touch pwned"
    setup, detect = deploy_commands("triton", DEPLOY_CONFIG, detection, ["cam one", "rtsp://h/s?a=1&b=$(x)"])
    assert shlex.split(setup, comments=True)[4:6] == ["--max-batch-size", "8; touch pwned"]
    assert shlex.split(detect)[2:4] == ["cam one", "rtsp://h/s?a=1&b=$(x)"]


def test_emitted_build_engine_command_parses(small_config):
    """TensorRT cannot run here: the emitted build-engine line gets past option parsing to the missing library."""
    detection = deploy_detection("tensorrt", to_dict(load_config(small_config)), cameras=12)
    assert (detection["tensorrt"]["min_batch"], detection["tensorrt"]["max_batch"]) == (1, 16)
    export, build, detect = deploy_commands("tensorrt", shlex.quote(str(small_config)), detection)
    assert export.startswith("reidctl export-onnx -c") and export.endswith("--fp16")
    result = invoke(*shlex.split(build, comments=True)[1:])
    assert result.exit_code == 2 and "No such option" not in result.output and "Usage" not in result.output
    assert result.output.startswith("error: ONNX model not found")  # the command's own check, after parsing
