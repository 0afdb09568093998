"""python -m fusednn {info,check,bench}."""

import subprocess
import sys

import pytest
import torch

from fusednn import __main__ as cli
from fusednn import registry
from fusednn.registry import Kernel, OpInfo, Sample


def test_info_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "fusednn", "info"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "backends" in proc.stdout and torch.__version__ in proc.stdout


@pytest.fixture(scope="session")
def check_run():
    """``python -m fusednn check`` once per test session: (exit code, output)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["check"])
    return code, out.getvalue()


def test_check_passes_on_this_machine(check_run):
    code, out = check_run
    assert code == 0, out
    assert " 0 failed" in out
    for info in registry.ops():
        assert info.name in out


def test_check_reports_a_wrong_op(monkeypatch, capsys):
    """An op whose kernel is 1% off must FAIL, and make check exit 1."""
    wrong = OpInfo(
        name="wrong_op", family="test", function=lambda x: x * 1.01, reference=lambda x: x,
        kernels=(Kernel("cpu", (torch.float32,)),), samples=lambda: [Sample("s", (torch.randn(64, dtype=torch.float64),),
                                                                            opcheck=True)],
        bad_inputs=lambda: [],
    )
    monkeypatch.setitem(registry._OPS, "wrong_op", wrong)
    assert cli.main(["check", "--device", "cpu", "--ops", "wrong_op"]) == 1
    out = capsys.readouterr().out
    assert "wrong_op" in out and "FAIL" in out and "exceeds the bound" in out


def test_check_lists_the_registry(capsys):
    assert cli.main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    for info in registry.ops():
        assert info.name in out
    assert "cpu (float16, bfloat16, float32, float64)" in out  # the LSTM's C++ kernel


@pytest.mark.parametrize("command", ["check", "bench"])
def test_unavailable_device_is_one_line(command, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main([command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no CUDA device is available" in err
    assert cli.main([command, "--device", "gpu"]) == 2
    assert "--device must be cpu or cuda; got 'gpu'" in capsys.readouterr().err


def test_unknown_op_is_named(capsys):
    assert cli.main(["check", "--ops", "nope"]) == 2
    assert "unknown op(s) nope" in capsys.readouterr().err
