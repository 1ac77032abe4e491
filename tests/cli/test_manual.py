"""`--help` of every command is the user's manual: each command and each of its options explains itself."""

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from reidctl.cli import app

COMMANDS = ["detect", "export-onnx", "build-engine", "setup-triton", "bench", "recommend", "track"]
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


def test_help_imports_no_heavy_package():
    """`reidctl --help` and each command's help answer without torch, OpenCV or a backend's runtime (seconds each)."""
    probe = (
        "import sys\n"
        "from reidctl.cli import app\n"
        "for args in [['--help']] + [[name, '--help'] for name in sys.argv[1:]]:\n"
        "    try:\n"
        "        app(args, prog_name='reidctl')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "heavy = ('torch', 'torchvision', 'cv2', 'onnx', 'onnxruntime', 'tritonclient', 'tensorrt', 'matplotlib')\n"
        "print('imported:', *[name for name in heavy if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, *COMMANDS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "imported:"
