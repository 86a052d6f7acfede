"""Lock files for the container images: what the CPU image installs, a check that an image holds only locked
versions, and the GPU image's own lock.

    python deploy/docker/locks.py runtime pyproject.toml [--extra gpu]  # the project's runtime requirements
    python deploy/docker/locks.py check requirements.lock               # every installed distribution is pinned there
    python deploy/docker/locks.py gpu-lock                              # rewrite requirements-gpu.lock (pip, PyPI)

requirements.lock also holds the development tools (pytest, mypy, TA-Lib, vectorbt, ...); the CPU image installs
only the runtime requirements, each at its locked version (`pip install -c requirements.lock`), and `check` fails the
build if anything it installed is missing from the lock or at another version.

The `gpu` extra cannot be installed at requirements.lock's versions: the RAPIDS wheels hold back the packages in
RELEASED. requirements-gpu.lock is requirements.lock with those released, resolved once more with the extra.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASED = ("llvmlite", "numba", "pandas")  # cudf-cu12 26.10 wants numba<0.65 and pandas<3.1
NOT_LOCKED = ("pip", "setuptools", "wheel", "streamquant")  # the installer itself and the project


def normalize(name: str) -> str:
    """PEP 503 name normalization: `PyYAML` and `pyyaml`, `typing_extensions` and `typing-extensions` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of a lock file, by normalized name."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path}: not a pin: {raw!r}")
        pins[normalize(name.strip())] = version.strip()
    return pins


def runtime_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return requirements


def unlocked_distributions(lock: dict[str, str]) -> list[str]:
    """Installed distributions that the lock does not pin at their installed version."""
    problems = []
    for dist in metadata.distributions():
        name = normalize(dist.metadata["Name"])
        if name in NOT_LOCKED:
            continue
        locked = lock.get(name)
        if locked != dist.version:
            problems.append(f"{name} {dist.version} (lock: {locked or 'absent'})")
    return sorted(problems)


def write_gpu_lock(output: Path) -> None:
    """Resolve the runtime requirements plus the `gpu` extra against requirements.lock, less RELEASED."""
    if sys.version_info[:2] != (3, 11) or platform.system() != "Linux" or platform.machine() != "x86_64":
        raise SystemExit("run this with the images' Python: CPython 3.11 on Linux x86_64")
    cpu = read_lock(ROOT / "requirements.lock")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp, "constraints.txt")
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(cpu.items()) if n not in RELEASED))
        report = Path(tmp, "report.json")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), "-c", str(constraints), f"{ROOT}[gpu]"],
            check=True)
        resolved = json.loads(report.read_text())["install"]
    pins = sorted((item["metadata"]["name"], item["metadata"]["version"]) for item in resolved
                  if normalize(item["metadata"]["name"]) != "streamquant")
    lines = [
        "# Exact runtime versions of the GPU image (Python 3.11, Linux x86_64): the project's dependencies plus the",
        "# `gpu` extra. Everything is at requirements.lock's version except what the RAPIDS wheels hold back",
        f"# ({', '.join(RELEASED)}). Regenerate with `python deploy/docker/locks.py gpu-lock` after `make lock`.",
        *(f"{name}=={version}" for name, version in sorted(pins, key=lambda p: normalize(p[0]))),
    ]
    output.write_text("\n".join(lines) + "\n")
    moved = [f"{n} {cpu[normalize(n)]} -> {v}" for n, v in pins if normalize(n) in cpu and cpu[normalize(n)] != v]
    print(f"wrote {output}: {len(pins)} pins; differ from requirements.lock: {', '.join(moved) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="what", required=True)
    runtime = sub.add_parser("runtime", help="print the runtime requirements, one a line")
    runtime.add_argument("pyproject", type=Path)
    runtime.add_argument("--extra", action="append", default=[])
    check = sub.add_parser("check", help="fail if an installed distribution is not pinned by the lock")
    check.add_argument("lock", type=Path)
    gpu = sub.add_parser("gpu-lock", help="rewrite the GPU image's lock")
    gpu.add_argument("--output", type=Path, default=ROOT / "requirements-gpu.lock")
    args = parser.parse_args()
    if args.what == "runtime":
        print("\n".join(runtime_requirements(args.pyproject, args.extra)))
    elif args.what == "check":
        problems = unlocked_distributions(read_lock(args.lock))
        if problems:
            raise SystemExit(f"installed but not locked in {args.lock}: {'; '.join(problems)}")
        print(f"every installed distribution is pinned by {args.lock}")
    else:
        write_gpu_lock(args.output)


if __name__ == "__main__":
    main()
