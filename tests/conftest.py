"""Test set-up: Triton's interpreter on machines without a GPU, NaN-poisoned kernel
outputs for every test, a fixed seed per test, and the register/spill report."""

import os
import zlib

import torch

# Must happen before any Triton kernel is defined: @triton.jit reads it at decoration time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Under pytest-xdist (make test) every core runs a worker: one torch thread each, or two
# workers' thread pools would fight over the cores. The recurrent tests check the
# multi-threaded splits explicitly (test_recurrent.py::test_threads_agree).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

import fusednn  # noqa: E402
from fusednn.testing import poison_outputs  # noqa: E402


@pytest.fixture(autouse=True)
def _poisoned_outputs_and_seed(request):
    """Every test sees NaN in any output element a kernel fails to write, and draws its
    random inputs from a seed of its own that is the same on every run (a failure
    reproduces)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    with poison_outputs():
        yield


def pytest_report_header(config):
    info = fusednn.build_info()
    return [
        f"fusednn: backends {info['backends']}, torch {torch.__version__}, "
        f"cuda available: {torch.cuda.is_available()}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the register/spill report the nvcc and Triton compile checks collected."""
    from test_cuda_compile import COMPILE_REPORT

    lines = config.stash.get(COMPILE_REPORT, [])
    if lines:
        terminalreporter.section("GPU kernels (nvcc and Triton): registers and spills (ptxas)")
        for line in lines:
            terminalreporter.write_line(line)
