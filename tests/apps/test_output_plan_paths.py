"""detect's output plan applies io.paths' rule to every camera's paths: a file met by a second name (a hard link, a
symlinked folder) is one path, refused before any work."""

import os
import re

import pytest
from typer.testing import CliRunner

from reidctl.apps.pipeline import OutputRequest, plan_outputs
from reidctl.cli import app
from reidctl.errors import ReidctlError


@pytest.mark.parametrize("alias", ["hard link", "symlinked folder"])
def test_a_camera_file_and_another_output_on_one_file_are_refused(tmp_path, alias):
    (tmp_path / "mot").mkdir()
    (tmp_path / "mot" / "a.txt").write_text("")  # a previous run's
    if alias == "hard link":
        jsonl = tmp_path / "d.jsonl"
        os.link(tmp_path / "mot" / "a.txt", jsonl)  # a second name of one inode: resolve() does not meet it
    else:
        (tmp_path / "alias").symlink_to(tmp_path / "mot")
        jsonl = tmp_path / "alias" / "a.txt"
    message = f"^--mot and --jsonl both write {re.escape(str(jsonl))}: give each output its own path$"
    with pytest.raises(ReidctlError, match=message):
        plan_outputs(["a", "b"], OutputRequest(mot=tmp_path / "mot", jsonl=jsonl))


def test_detect_refuses_one_path_given_twice_through_a_symlink(tmp_path, small_config, video_file):
    (tmp_path / "alias").symlink_to(tmp_path)
    result = CliRunner().invoke(app, ["detect", str(video_file), "-c", str(small_config), "--no-progress",
                                      "--mot", str(tmp_path / "x.txt"), "--jsonl", str(tmp_path / "alias" / "x.txt")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--mot and --jsonl both write" in errors[0], result.stderr
    assert not (tmp_path / "x.txt").exists()
