"""What a runner's artifact must agree with in the config, checked in one place for every backend: by
create_detector, and by a bench client process's frame sender, which imports no torch (nor does this module).
"""

from __future__ import annotations

from reidctl.errors import ReidctlError


def check_input_size(artifact_size: tuple[int, int] | None, input_size: tuple[int, int], artifact_name: str) -> None:
    """The Detector letterboxes to detection.test_size; an artifact built for another size cannot take that.
    ``artifact_size`` None: the artifact takes any size."""
    if artifact_size is None or tuple(artifact_size) == tuple(input_size):
        return
    height, width = artifact_size
    configured = "x".join(str(side) for side in input_size)
    raise ReidctlError(f"{artifact_name} takes {height}x{width} input but detection.test_size is {configured}: "
                       f"pass --test-size {height}x{width} or set detection.test_size: [{height}, {width}]")


def checked(runner, detection):
    """``runner`` (a Runner, or a client with the same ``input_size``, ``artifact_name``, ``check_config`` and
    ``close``) once its artifact takes ``detection``'s input size and meets the runner's own conditions; closed, and
    the reason raised, where it does not."""
    try:
        check_input_size(runner.input_size, detection.input_size, runner.artifact_name)
        runner.check_config(detection)
    except BaseException:
        runner.close()
        raise
    return runner
