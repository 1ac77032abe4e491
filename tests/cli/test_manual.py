"""`--help` of every command is the user's manual: each command and each of its options explains itself."""

import pytest
import typer
from typer.testing import CliRunner

from reidctl.cli import app

COMMANDS = ["detect", "export-onnx", "build-engine", "setup-triton", "bench", "recommend"]
runner = CliRunner()


def test_every_command_is_registered_in_order():
    assert list(typer.main.get_command(app).commands) == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_help_runs_and_every_option_has_help_text(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    command = typer.main.get_command(app).commands[name]
    assert command.help
    undocumented = [p.name for p in command.params if p.param_type_name == "option" and not (p.help or "").strip()]
    assert not undocumented, f"{name}: options without help text: {undocumented}"
