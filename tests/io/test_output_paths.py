"""Output paths are checked before the work: one line, nothing written, nothing left behind."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from reidctl.cli import app
from reidctl.errors import ReidctlError
from reidctl.io.atomic import check_output_path, check_writable_dir


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("directory", "is a directory: give a file name"),
        ("/proc/out.onnx", "cannot write to /proc: "),
        ("/dev/null", "output /dev/null is not a regular file"),
    ],
)
def test_export_onnx_refuses_an_output_it_could_not_write(tmp_path, small_config, target, message):
    output = tmp_path if target == "directory" else Path(target)
    result = CliRunner().invoke(app, ["export-onnx", "-c", str(small_config), "-o", str(output), "--no-progress"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "ONNX export" not in result.output  # refused before the model was loaded and exported


def test_a_writable_path_passes_and_leaves_no_probe(tmp_path):
    target = tmp_path / "new" / "out.json"
    assert check_output_path(target) == target
    assert list(target.parent.iterdir()) == []
    with pytest.raises(ReidctlError, match="is a directory"):
        check_output_path(target.parent)


def test_a_missing_output_directory_is_probed_at_its_nearest_ancestor_and_not_made(tmp_path):
    check_writable_dir(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(ReidctlError, match=r"cannot create output directory .*/file/d: .*/file is a file$"):
        check_writable_dir(tmp_path / "file" / "d")
    with pytest.raises(ReidctlError, match=r"^cannot create output directory /proc/x/y: /proc takes no new files \("):
        check_writable_dir(Path("/proc/x/y"))
    with pytest.raises(ReidctlError, match=r"^cannot write to /proc: "):
        check_writable_dir(Path("/proc"))
