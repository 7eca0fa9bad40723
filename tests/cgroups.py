"""Real cgroup v1 groups for tests: a child of this process's own memory, cpuset and cpu cgroups with the limits
asked, and the command prefix that moves a subprocess into them. Skips (pytest.skip) where they cannot be made:
not root, no v1 controllers, read-only cgroupfs."""

import contextlib
import pathlib
import time
import uuid

import pytest

from fleetfit.agent import resources


def _own_dir(controller: str) -> pathlib.Path | None:
    for group in resources.cgroups():
        if group.version == 1 and controller in group.controllers and group.levels:  # levels: mounted here
            return group.levels[0]
    return None


@contextlib.contextmanager
def v1_cgroup(memory_bytes: int | None = None, cpus: str | None = None, quota_us: int | None = None):
    """Yields the argv prefix that runs a command inside new v1 cgroups with these limits (memory.limit_in_bytes,
    cpuset.cpus, cpu.cfs_quota_us of a 100 ms period); removes them after its processes have exited."""
    wanted = [c for c, v in (("memory", memory_bytes), ("cpuset", cpus), ("cpu", quota_us)) if v is not None]
    made: list[pathlib.Path] = []
    name = f"fleetfit-test-{uuid.uuid4().hex[:8]}"
    try:
        for controller in wanted:
            parent = _own_dir(controller)
            if parent is None:
                pytest.skip(f"no cgroup v1 {controller} controller here")
            (parent / name).mkdir()
            made.append(parent / name)
            if controller == "memory":
                (parent / name / "memory.limit_in_bytes").write_text(str(memory_bytes))
            elif controller == "cpuset":
                (parent / name / "cpuset.cpus").write_text(cpus)
                (parent / name / "cpuset.mems").write_text((parent / "cpuset.mems").read_text())
            else:
                (parent / name / "cpu.cfs_period_us").write_text("100000")
                (parent / name / "cpu.cfs_quota_us").write_text(str(quota_us))
    except OSError as exc:
        _remove(made)
        pytest.skip(f"cannot create cgroups here ({exc.strerror}: not root, or cgroupfs read-only)")
    moves = "; ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in made)
    try:
        yield ["sh", "-c", f'{moves} && exec "$@"', "sh"]
    finally:
        _remove(made)


def _remove(dirs: list[pathlib.Path]) -> None:
    """rmdir each group once its processes (a worker may outlive its agent by a moment) have exited."""
    for d in dirs:
        for _ in range(100):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY: a process is still inside
                time.sleep(0.1)
