"""One rule for "can outputs be written in this folder": a file is made there and removed, whatever the permission
bits say."""

from pathlib import Path

import pytest

from reidctl.errors import ReidctlError
from reidctl.io.atomic import ensure_writable_dir


def test_a_folder_is_made_and_probed_and_nothing_is_left(tmp_path):
    ensure_writable_dir(tmp_path / "new" / "deeper")
    assert list((tmp_path / "new" / "deeper").iterdir()) == []


def test_a_folder_that_takes_no_files_is_refused_even_where_os_access_says_writable():
    # Root passes os.access on /proc, where creating a file still fails: only the probe tells.
    with pytest.raises(ReidctlError, match=r"^cannot write to /proc: "):
        ensure_writable_dir(Path("/proc"))


def test_a_folder_under_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ReidctlError, match=r"^cannot create output directory .*/file/d: "):
        ensure_writable_dir(tmp_path / "file" / "d")
