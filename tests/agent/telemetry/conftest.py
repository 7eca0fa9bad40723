import pathlib
import shutil

import pytest

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures"
SYSFS = FIXTURES / "sysfs"


def no_vcgencmd(command):
    """A command runner on a machine without vcgencmd."""
    raise FileNotFoundError(2, "No such file or directory", command[0])


@pytest.fixture()
def sysfs_copy(tmp_path):
    """A writable copy of a committed device tree, for tests that change counters or break files."""

    def copy(device: str) -> pathlib.Path:
        root = tmp_path / device
        shutil.copytree(SYSFS / device, root, symlinks=True)
        return root

    return copy
