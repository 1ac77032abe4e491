"""Which of several Triton servers each camera uses (ServerPool), and detection.triton.url with several servers."""

import pytest

from helpers import write_config
from reidctl.config import load_config
from reidctl.errors import ReidctlError
from reidctl.triton.client import RECHECK_FIRST_S, RECHECK_MAX_S, ServerPool

URLS = ["a:8001", "b:8001", "c:8001"]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cameras(pool: ServerPool) -> list[int]:
    return [share["cameras"] for share in pool.report()]


def test_new_cameras_go_to_the_live_server_with_fewest_and_stay():
    pool = ServerPool(URLS)
    assert [pool.join(camera) for camera in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    pool.leave(1)
    pool.leave(4)  # server 1 now has none
    assert pool.join("new") == 1
    assert cameras(pool) == [3, 1, 2]
    assert [share["cameras_assigned"] for share in pool.report()] == [3, 3, 2]


def test_a_down_servers_cameras_move_to_live_ones_and_are_counted():
    pool = ServerPool(URLS[:2])
    for camera in range(4):
        pool.join(camera)  # 0, 2 on a; 1, 3 on b
    pool.count_request(0)
    pool.count_request(0, failed=True)
    pool.mark_down(0)
    assert pool.move(0) == 1 and pool.move(2) == 1
    assert pool.join("new") == 1  # a down server takes no new camera
    a, b = pool.report()
    assert a == {"url": "a:8001", "live": False, "cameras": 0, "cameras_assigned": 2, "requests": 2,
                 "failed_requests": 1, "cameras_moved_away": 2}  # fmt: skip
    assert b["cameras"] == 5 and b["cameras_moved_away"] == 0 and b["live"]
    pool.mark_down(1)
    assert pool.move(1) is None and pool.join("late") is None  # no live server: nowhere to go
    assert cameras(pool) == [0, 4]


def test_a_down_server_is_checked_again_with_back_off_and_takes_new_cameras():
    clock = Clock()
    pool = ServerPool(URLS[:2], clock)
    pool.mark_down(0)
    assert pool.due_for_check() == []
    clock.now += RECHECK_FIRST_S
    assert pool.due_for_check() == [0]
    assert pool.due_for_check() == []  # handed to one caller; the next check waits twice as long
    clock.now += 2 * RECHECK_FIRST_S - 0.01
    assert pool.due_for_check() == []
    clock.now += 0.01
    assert pool.due_for_check() == [0]
    clock.now += 10 * RECHECK_MAX_S
    assert pool.due_for_check() == [0]
    clock.now += RECHECK_MAX_S  # the back-off stops growing
    assert pool.due_for_check() == [0]
    pool.join("x")  # on server 1
    pool.mark_live(0)
    assert pool.join("y") == 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("localhost:8101", ["localhost:8101"]),
        ("localhost:8101, localhost:8111", ["localhost:8101", "localhost:8111"]),
        (["h1:8001", "h2:8001"], ["h1:8001", "h2:8001"]),
    ],
)
def test_url_takes_one_server_a_list_or_a_comma_separated_string(tmp_path, url, expected):
    config = load_config(write_config(tmp_path / "c.yaml", None, triton={"url": url}))
    assert config.detection.triton.urls == expected


@pytest.mark.parametrize("url", ["", [], ["h1:8001", ""], "h1:8001,h1:8001", "h1:8001,", [8001]])
def test_bad_urls_are_one_line_errors(tmp_path, url):
    with pytest.raises(ReidctlError, match="config key 'detection.triton.url'") as info:
        load_config(write_config(tmp_path / "c.yaml", None, triton={"url": url}))
    assert "\n" not in str(info.value)
