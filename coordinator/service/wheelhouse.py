"""The fleet's wheelhouse, kept in the coordinator's state directory: what a device installs from the coordinator
alone (coordinator/service/install_server.py serves it).

    STATE/wheelhouse/packages/   the fleetfit wheel, its dependencies' wheels for each device class the operator
                                 prepared (`fleetfit wheelhouse add`), and llama-cpp-python's source distribution
                                 with its build tools (a device whose class has no checked wheel builds from these)
    STATE/wheelhouse/llama/CLASS/  the llama.cpp wheel the first device of CLASS built and checked, and build.json

A device class (agent/llama_wheel.device_class): architecture, the CPU features ggml's kernels use, CUDA or not,
the Python version. A wheel is only ever offered to its own class, and each device checks it before use.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from fleetfit.models.backends import llama_cpp_python_pin
from fleetfit.models.gguf_file import sha256_of

# What a device needs beside fleetfit's own dependencies: llama-cpp-python's (its wheel is the fleet's or built
# here), and what building it takes.
LLAMA_RUNTIME = ["numpy>=1.20.0", "typing-extensions>=4.5.0", "diskcache>=5.6.1", "jinja2>=2.11.3"]
LLAMA_BUILD = ["scikit-build-core[pyproject]>=0.9.2", "cmake>=3.21", "ninja"]
CLASS = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,127}")
WHEEL = re.compile(r"[A-Za-z0-9_.\-+]{1,200}\.whl")
FILE = re.compile(r"[A-Za-z0-9_.\-+]{1,200}\.(whl|tar\.gz|zip)")


class WheelhouseError(Exception):
    """One line for users (and for a device's upload: 409 when `conflict`)."""

    def __init__(self, message: str, conflict: bool = False):
        super().__init__(message)
        self.conflict = conflict


def normalize(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str:
    """The normalized project a wheel or sdist file belongs to."""
    if filename.endswith(".whl"):
        return normalize(filename.split("-")[0])
    stem = re.sub(r"\.(tar\.gz|zip)$", "", filename)
    return normalize(stem.rsplit("-", 1)[0])


@dataclasses.dataclass
class Wheelhouse:
    root: pathlib.Path
    digests: dict = dataclasses.field(default_factory=dict, repr=False)  # (name, size, mtime) -> sha256

    def digest(self, path: pathlib.Path) -> str:
        """A package file's sha256, hashed once per version of the file (the index gives it in every link)."""
        stat = path.stat()
        key = (path.name, stat.st_size, stat.st_mtime_ns)
        if key not in self.digests:
            self.digests[key] = sha256_of(path)
        return self.digests[key]

    @property
    def packages(self) -> pathlib.Path:
        return self.root / "packages"

    def projects(self) -> list[str]:
        if not self.packages.is_dir():
            return []
        return sorted({project_of(p.name) for p in self.packages.iterdir() if FILE.fullmatch(p.name)})

    def project_files(self, project: str) -> list[pathlib.Path]:
        if not self.packages.is_dir():
            return []
        return sorted(p for p in self.packages.iterdir() if FILE.fullmatch(p.name) and
                      project_of(p.name) == normalize(project))

    def package_file(self, name: str) -> pathlib.Path | None:
        return self.packages / name if FILE.fullmatch(name) else None

    def llama(self, device_class: str) -> dict | None:
        """{"class", "wheel", "sha256", "build"} of the wheel held for `device_class`, or None."""
        if not CLASS.fullmatch(device_class):
            return None
        record = self.root / "llama" / device_class / "build.json"
        try:
            return json.loads(record.read_text())
        except (OSError, ValueError):
            return None

    def llama_file(self, device_class: str, name: str) -> pathlib.Path | None:
        held = self.llama(device_class)
        return self.root / "llama" / device_class / name if held and held["wheel"] == name else None

    def add_llama(self, device_class: str, name: str, stream, size: int, build: dict) -> dict:
        """Keep a device's checked wheel for its class (the first one only: WheelhouseError(conflict) after)."""
        if not CLASS.fullmatch(device_class) or not WHEEL.fullmatch(name) or \
                project_of(name) != "llama-cpp-python":
            raise WheelhouseError("a llama-cpp-python wheel for a device class is expected "
                                  "(PUT /llama/CLASS/llama_cpp_python-...whl)")
        if self.llama(device_class):
            raise WheelhouseError(f"the fleet already holds a llama.cpp wheel for {device_class}", conflict=True)
        directory = self.root / "llama" / device_class
        directory.mkdir(parents=True, exist_ok=True)
        digest, left = hashlib.sha256(), size
        with tempfile.NamedTemporaryFile(dir=directory, delete=False) as out:
            while left > 0 and (chunk := stream.read(min(left, 1 << 20))):
                digest.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        if left:
            os.unlink(out.name)
            raise WheelhouseError(f"the upload ended {left} bytes short")
        os.replace(out.name, directory / name)
        record = {"class": device_class, "wheel": name, "sha256": digest.hexdigest(), "build": build}
        tmp = directory / "build.json.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, directory / "build.json")  # last: its presence means the wheel is whole
        return record

    def listing(self) -> dict:
        """What the fleet holds: packages per project, and the llama.cpp wheel per device class."""
        llama_dir = self.root / "llama"
        classes = sorted(p.name for p in llama_dir.iterdir() if p.is_dir()) if llama_dir.is_dir() else []
        return {"packages": {p: [f.name for f in self.project_files(p)] for p in self.projects()},
                "llama": [held for c in classes if (held := self.llama(c))]}


def fleetfit_wheel(out: pathlib.Path) -> pathlib.Path:
    """Build this installation's fleetfit into a wheel in `out` (from the source tree it was installed from)."""
    source = pathlib.Path(__file__).resolve().parents[2]  # coordinator/service/ -> the tree holding pyproject.toml
    if not (source / "pyproject.toml").exists():
        raise WheelhouseError("fleetfit is not installed from a source tree here: give its wheel with --fleetfit-wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(source)], capture_output=True, text=True)
    if done.returncode:
        raise WheelhouseError(f"building the fleetfit wheel failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return max(out.glob("fleetfit-*.whl"), key=lambda p: p.stat().st_mtime)


LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def platform_tags(tag: str) -> list[str]:
    """`tag` and every older manylinux tag a device that takes it also takes (pip download expands none of the
    PEP 600 tags, manylinux_2_28_x86_64, and only the legacy ones among themselves); others as given."""
    found = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    legacy = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", tag)
    if not (found or legacy):
        return [tag]
    glibc, arch = (int(found.group(1)), found.group(2)) if found else (LEGACY_MANYLINUX[legacy.group(1)],
                                                                        legacy.group(2))
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    return tags + [f"{name}_{arch}" for name, minor in LEGACY_MANYLINUX.items() if minor <= glibc]


def add(house: Wheelhouse, python: str, platforms: list[str], wheel: pathlib.Path | None = None,
        extras: str = "", with_source: bool = True) -> list[str]:
    """Fill the wheelhouse for devices of `platforms` (pip's tags, e.g. manylinux2014_aarch64) running Python
    `python` (3.11) with `pip download`: the fleetfit wheel and its dependencies, llama-cpp-python's, and (with
    `with_source`) llama-cpp-python's source and build tools. The names of the files added."""
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise WheelhouseError(f"--python {python!r}: give MAJOR.MINOR, e.g. 3.11")
    house.packages.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in house.packages.iterdir()}
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or fleetfit_wheel(pathlib.Path(tmp))
        shutil.copy2(wheel, house.packages / wheel.name)
        target = f"{wheel}[{extras}]" if extras else str(wheel)
        platform_args = [a for p in platforms for tag in platform_tags(p) for a in ("--platform", tag)]
        _pip(["download", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
              *platform_args, "-d", str(house.packages), target, *LLAMA_RUNTIME, *LLAMA_BUILD])
        if with_source:
            _pip(["download", "--no-deps", "--no-binary=:all:", "-d", str(house.packages),
                  f"llama-cpp-python=={llama_cpp_python_pin()}"])
    return sorted({p.name for p in house.packages.iterdir()} - before)


def _pip(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise WheelhouseError(f"pip {args[0]} failed: {last[:300]}")
