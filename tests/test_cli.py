"""python -m fusednn {info,check,bench}."""

import json
import subprocess
import sys

import pytest
import torch

from fusednn import __main__ as cli
from fusednn import check


def test_info_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "fusednn", "info"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "backends" in proc.stdout and torch.__version__ in proc.stdout


def test_check_passes_on_this_machine(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "lstm" in out and " 0 failed" in out


def test_check_reports_a_failure(monkeypatch, capsys):
    def broken(dtype, device):
        raise AssertionError("relative error 1.0e+00 exceeds 1.0e-05")

    monkeypatch.setitem(check.CASES, "broken_op", (broken, ("cpu",)))
    assert cli.main(["check", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "broken_op" in out and "FAIL" in out


def test_bench_writes_json(tmp_path):
    assert cli.main(["bench", "--quick", "--ops", "lstm", "layer_norm", "--out", str(tmp_path), "--device", "cpu"]) == 0
    (device_dir,) = tmp_path.iterdir()
    (path,) = device_dir.glob("*.json")
    data = json.loads(path.read_text())
    for key in ("device", "torch", "triton", "commit", "date", "results"):
        assert key in data
    rows = data["results"]
    assert {r["provider"] for r in rows} == {"fusednn", "torch"}
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert r["op"] == "lstm" and r["dtype"] == "float32" and r["ms"] > 0 and r["tflops"] > 0
        assert r["shape"] == {"B": 16, "T": 128, "I": 256, "H": 256}
    assert any("layer_norm" in s for s in data["skipped"])  # no CPU kernel: said, not silently dropped


def test_bench_rejects_unknown_op(tmp_path, capsys):
    assert cli.main(["bench", "--ops", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown op" in capsys.readouterr().err

