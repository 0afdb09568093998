"""The dependencies of fusednn's build and test suite, installed into the running interpreter.

Run by the Makefile inside the project's virtual environment (``.venv``, which sees the
system's packages so that an installed torch is kept). Idempotent: a second run installs
nothing.

The rules:

* torch: an installed torch >= 2.6 is kept, whatever its build (CUDA machines bring
  their own); otherwise ``TORCH_SPEC`` is installed.
* triton: the installed torch decides. A torch that requires a triton (PyPI's Linux
  wheels do) gets exactly that requirement; a torch that names none (the CPU wheels of
  download.pytorch.org) gets the release its version was published with
  (``TRITON_FOR_TORCH``). An installed triton that satisfies the rule is kept.
* numpy: pinned only where the triton in use needs it: Triton's CPU interpreter, which
  runs the Triton kernels on machines without a GPU, fails on numpy >= 2.4 before
  triton 3.7.
* numpy and the test and build tools (pytest, pybind11, ninja, setuptools, wheel) go into
  the virtual environment itself even where the system has them, so the host's versions
  (and pytest plugins) do not decide the test session.

``--print`` prints the requirement set for this interpreter without installing;
``--check-resolves`` asks pip, with its configuration and environment variables switched
off (plain PyPI, as a new user's machine), whether the set a fresh machine would
install -- and the set for this machine's torch -- resolve. CI runs it so a pin that
cannot be installed fails here first.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tempfile

TORCH_SPEC = "torch==2.13.0"
MIN_TORCH = (2, 6)

# torch (major, minor) -> the triton its Linux wheels on PyPI require (read from their
# metadata); used for a torch that names no triton itself.
TRITON_FOR_TORCH = {
    (2, 6): "3.2.0",
    (2, 7): "3.3.1",
    (2, 8): "3.4.0",
    (2, 9): "3.5.1",
    (2, 10): "3.6.0",
    (2, 11): "3.6.0",
    (2, 12): "3.7.1",
    (2, 13): "3.7.1",
    (2, 14): "3.8.0",
    (2, 15): "3.9.0",
}
# The first triton whose interpreter works with numpy >= 2.4.
TRITON_NUMPY_24 = (3, 7)

BUILD_AND_TEST_TOOLS = ["pytest>=8.4", "pytest-xdist>=3.5", "expecttest", "pybind11", "ninja", "setuptools>=64", "wheel"]


def parse_version(raw: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); '3.7.1' -> (3, 7, 1)."""
    parts = []
    for piece in raw.split("+")[0].split(".")[:3]:
        digits = re.match(r"\d*", piece).group(0)
        parts.append(int(digits or 0))
    return tuple(parts)


def installed_version(dist: str) -> tuple[int, ...] | None:
    try:
        return parse_version(md.version(dist))
    except md.PackageNotFoundError:
        return None


def _marker_applies(marker: str) -> bool:
    """Evaluates a requirement's environment marker (``platform_system == "Linux"`` ...)."""
    try:
        from packaging.markers import Marker
    except ImportError:  # a bare virtual environment: pip vendors packaging
        from pip._vendor.packaging.markers import Marker
    return Marker(marker).evaluate()


def torch_triton_requirement(torch_dist: str = "torch") -> str | None:
    """The triton requirement the installed torch declares for this platform, e.g.
    'triton==3.7.1', or None when it declares none."""
    for requirement in md.requires(torch_dist) or []:
        spec, _, marker = requirement.partition(";")
        name = re.match(r"[A-Za-z0-9_.-]+", spec.strip()).group(0)
        if name.lower() != "triton" or "extra ==" in marker:
            continue
        if marker.strip() and not _marker_applies(marker.strip()):
            continue
        return spec.replace(" ", "").replace("(", "").replace(")", "")
    return None


def paired_triton(torch_version: tuple[int, ...]) -> str:
    """The triton release a torch version was published with (for torch builds that name none)."""
    key = torch_version[:2]
    if key in TRITON_FOR_TORCH:
        return f"triton=={TRITON_FOR_TORCH[key]}"
    newest = max(TRITON_FOR_TORCH)
    if key > newest:
        print(f"fusednn: torch {'.'.join(map(str, torch_version))} is newer than the pairing table "
              f"(last: torch {newest[0]}.{newest[1]}); installing the newest triton", file=sys.stderr)
        return "triton"
    raise SystemExit(f"fusednn: torch {'.'.join(map(str, torch_version))} is older than {MIN_TORCH}")


def _satisfies(version: tuple[int, ...], spec: str) -> bool:
    """Whether an installed version satisfies a simple spec ('triton==3.7.1', 'triton~=3.8.0', 'triton')."""
    match = re.match(r"[A-Za-z0-9_.-]+\s*(==|~=|>=)?\s*([\d.]*)", spec)
    op, wanted = match.group(1), match.group(2)
    if not op:
        return True
    target = parse_version(wanted)
    if op == "==":
        return version[: len(target)] == target
    if op == ">=":
        return version >= target
    # ~=X.Y.Z: >= X.Y.Z and == X.Y.*
    return version >= target and version[: len(target) - 1] == target[: len(target) - 1]


def _version_in_spec(spec: str) -> tuple[int, ...] | None:
    match = re.search(r"(==|~=|>=)\s*([\d.]+)", spec)
    return parse_version(match.group(2)) if match else None


def _in_this_environment(dist: str) -> bool:
    """True when ``dist`` is installed in this interpreter's own prefix (the virtual
    environment), not only in the system packages it sees."""
    try:
        location = str(md.distribution(dist).locate_file(""))
    except md.PackageNotFoundError:
        return False
    return os.path.realpath(location).startswith(os.path.realpath(sys.prefix))


def requirements(fresh: bool = False) -> list[str]:
    """What to install into this interpreter (``fresh``: as if nothing were installed)."""
    wanted: list[str] = []
    torch_version = None if fresh else installed_version("torch")
    if torch_version is None or torch_version < MIN_TORCH:
        wanted.append(TORCH_SPEC)
        torch_version = parse_version(TORCH_SPEC.split("==")[1])
        # PyPI's wheel of TORCH_SPEC requires this triton itself; name it so that pip
        # resolves both together.
        triton_spec = paired_triton(torch_version)
    else:
        triton_spec = torch_triton_requirement() or paired_triton(torch_version)

    triton_version = None if fresh else (installed_version("triton") or installed_version("pytorch-triton"))
    if triton_version is None or not _satisfies(triton_version, triton_spec):
        wanted.append(triton_spec)
        triton_version = _version_in_spec(triton_spec)

    # numpy runs the Triton interpreter in the test session: ours, not the system's.
    numpy_version = installed_version("numpy") if not fresh and _in_this_environment("numpy") else None
    if triton_version is not None and triton_version[:2] < TRITON_NUMPY_24:
        if numpy_version is None or numpy_version >= (2, 4):
            wanted.append("numpy<2.4")
    elif numpy_version is None:
        wanted.append("numpy")

    for spec in BUILD_AND_TEST_TOOLS:
        dist = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
        if fresh or not _in_this_environment(dist):
            wanted.append(spec)
    return wanted


def pip_install(specs: list[str]) -> int:
    print("fusednn: installing " + " ".join(specs), flush=True)
    # --ignore-installed puts the tools into this environment even where the system
    # packages it sees have them (they would otherwise count as installed).
    return subprocess.call([sys.executable, "-m", "pip", "install", "--ignore-installed", *specs])


def check_resolves() -> int:
    """pip's dry run of the fresh-machine set and of this machine's set against plain PyPI."""
    sets = {"a fresh machine": requirements(fresh=True), "this machine": requirements()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    status = 0
    with tempfile.TemporaryDirectory() as scratch:
        for what, specs in sets.items():
            if not specs:
                print(f"fusednn: {what}: nothing to install")
                continue
            cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--isolated", "--ignore-installed",
                   "--quiet", "--report", os.path.join(scratch, "report.json"), *specs]
            print(f"fusednn: does the set for {what} resolve on plain PyPI? {' '.join(specs)}", flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
                print(f"fusednn: the set for {what} does NOT resolve", file=sys.stderr)
                status = 1
            else:
                print(f"fusednn: the set for {what} resolves")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the requirement set, install nothing")
    parser.add_argument("--fresh", action="store_true", help="with --print: the set for a machine with nothing")
    parser.add_argument("--check-resolves", action="store_true",
                        help="check with pip (configuration off, plain PyPI) that the sets resolve")
    args = parser.parse_args(argv)
    if args.check_resolves:
        return check_resolves()
    wanted = requirements(fresh=args.fresh)
    if args.print:
        print(" ".join(wanted))
        return 0
    if not wanted:
        print("fusednn: dependencies already installed")
        return 0
    return pip_install(wanted)


if __name__ == "__main__":
    sys.exit(main())
