"""python -m fusednn {info,check,bench,plot,train}."""

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


# --------------------------------------------------------------------------- bench and plot
#
# A stub op with a benchmark through the harness's own API (registry shapes, a Case per
# shape), so the tests never run a real family benchmark; the timing is cut to a sliver.

STUB_SHAPES = registry.BenchShapes(cpu=({"n": 32}, {"n": 64}), cpu_quick=({"n": 16},))
STUB_FAILURE = "this backend is not installed here"


def _stub_op(name, bench):
    return OpInfo(name=name, family="test", function=torch.tanh, reference=torch.tanh,
                  kernels=(Kernel("cpu", (torch.float32,)),), samples=lambda: [], bad_inputs=lambda: [], bench=bench)


def _stub_case(shape, device):
    from fusednn.bench.runner import Case

    n = shape["n"]

    def broken():
        raise RuntimeError(STUB_FAILURE)

    x = torch.randn(n, n, device=device, requires_grad=True)
    linear = torch.nn.Linear(n, n, device=device)  # a module: its parameters get gradients too
    return Case(torch.float32, (x,), {"fusednn": lambda: torch.tanh, "torch": lambda: linear, "broken": broken},
                flops={"fwd": 2.0 * n**3, "bwd": 4.0 * n**3, "fwd+bwd": 6.0 * n**3}, derived={"n2": n * n})


def _stub_bytes_case(shape, device):
    from fusednn.bench.runner import Case

    x = torch.randn(shape["n"], 64, device=device, requires_grad=True)
    size = x.numel() * x.element_size()
    return Case(torch.float32, (x,), {"fusednn": lambda: torch.exp, "torch": lambda: torch.sigmoid},
                nbytes={"fwd": 2 * size, "bwd": 3 * size, "fwd+bwd": 5 * size})


@pytest.fixture(scope="module")
def stub_runs(tmp_path_factory):
    """One full and two quick CPU runs of the stub op (and of an op with GPU shapes only):
    {"full" / "quick1" / "quick2": the JSON, "paths": {run: path, run + " output": printed},
    "out": the results folder}. The copy bandwidth and the matmul peak are given, not
    measured (a large copy and GEMM take seconds)."""
    import contextlib
    import io
    import json

    from fusednn.bench import runner

    out = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry._OPS, "stub_op", _stub_op("stub_op", STUB_SHAPES))
        mp.setitem(registry._OPS, "stub_gpu_op", _stub_op("stub_gpu_op", registry.BenchShapes(gpu=({"n": 8},))))
        mp.setitem(runner.BENCHES, "stub_op", _stub_case)
        mp.setitem(runner.BENCHES, "stub_gpu_op", _stub_case)
        bytes_shapes = registry.BenchShapes(cpu=({"n": 8}, {"n": 16}))
        mp.setitem(registry._OPS, "stub_bytes_op", _stub_op("stub_bytes_op", bytes_shapes))
        mp.setitem(runner.BENCHES, "stub_bytes_op", _stub_bytes_case)
        for quick in (False, True):
            mp.setitem(runner.TIMING, ("cpu", quick), runner.Timing(rounds=2, warmup_ms=0, rep_ms=1))
        mp.setattr(runner, "measure_copy_bandwidth", lambda device, timing: 20.0)
        mp.setattr(runner, "measure_matmul_peak", lambda device, dtype, timing: (0.1, "stub"))
        argv = ["bench", "--device", "cpu", "--ops", "stub_op", "stub_gpu_op", "stub_bytes_op", "--out", str(out)]
        paths = {}
        for name, extra in (("full", []), ("quick1", ["--quick"]), ("quick2", ["--quick"])):
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                assert cli.main(argv + extra) == 0
            paths[name] = printed.getvalue().strip().splitlines()[-1].removeprefix("wrote ")
            paths[name + " output"] = printed.getvalue()
    return {"paths": paths, "out": out, **{name: json.load(open(paths[name])) for name in ("full", "quick1", "quick2")}}


def test_bench_json_holds_the_run(stub_runs):
    run = stub_runs["full"]
    for field in ("device", "device_type", "date", "time", "commit", "quick", "python", "torch", "triton", "cuda",
                  "threads", "cpu", "build", "timing", "copy_gbps", "matmul_peak", "results", "skipped"):
        assert field in run, field
    assert run["device_type"] == "cpu" and run["quick"] is False and run["threads"] == torch.get_num_threads()
    assert run["matmul_peak"] == {"float32": {"tflops": 0.1, "gemm": "stub"}}
    # what the fusednn provider ran, per op, also printed: the stubs' own C++-style kernel
    assert run["fusednn_backends"] == {"stub_op": "its cpu kernel", "stub_bytes_op": "its cpu kernel"}
    assert "stub_op: 2 shape(s); the fusednn provider runs its cpu kernel" in stub_runs["paths"]["full output"]
    rows = [r for r in run["results"] if r["op"] == "stub_op"]
    cases = {(r["provider"], r["mode"], r["shape"]["n"]) for r in rows}
    assert cases == {(p, m, n) for p in ("fusednn", "torch") for m in ("fwd", "bwd", "fwd+bwd") for n in (32, 64)}
    for r in rows:
        assert r["op"] == "stub_op" and r["dtype"] == "float32" and r["derived"] == {"n2": r["shape"]["n"] ** 2}
        assert 0 < r["ms_p20"] <= r["ms"] <= r["ms_p80"], r
        assert r["flops"] == {"fwd": 2, "bwd": 4, "fwd+bwd": 6}[r["mode"]] * r["shape"]["n"] ** 3
        assert r["tflops"] == pytest.approx(r["flops"] / (r["ms"] * 1e-3) / 1e12)
        assert r["pct_of_matmul_peak"] == pytest.approx(100 * r["tflops"] / 0.1)
    by_bytes = [r for r in run["results"] if r["op"] == "stub_bytes_op"]
    assert len(by_bytes) == 2 * 3 * 2 and all(r["gbps"] and r["tflops"] is None for r in by_bytes)
    assert all(r["pct_of_copy_bandwidth"] == pytest.approx(100 * r["gbps"] / 20.0) for r in by_bytes)


def test_bench_reports_what_it_skipped(stub_runs):
    skipped = stub_runs["full"]["skipped"]
    broken = [s for s in skipped if s["provider"] == "broken"]
    assert [s["shape"] for s in broken] == [{"n": 32}, {"n": 64}]
    assert all(s["op"] == "stub_op" and "set-up failed" in s["reason"] and STUB_FAILURE in s["reason"] for s in broken)
    gpu_only = [s for s in skipped if s["op"] == "stub_gpu_op"]
    assert len(gpu_only) == 1 and "no cpu benchmark shapes" in gpu_only[0]["reason"]
    output = stub_runs["paths"]["full output"]
    assert "baseline time / fusednn time; > 1 means fusednn is faster" in output
    assert " 0.00 " not in output and "FLOP/s" in output


def test_bench_quick_runs_the_quick_shapes_and_every_run_keeps_its_file(stub_runs):
    import os

    def sizes(run):
        return {r["shape"]["n"] for r in run["results"] if r["op"] == "stub_op"}

    assert sizes(stub_runs["quick1"]) == {16} and sizes(stub_runs["full"]) == {32, 64}
    assert stub_runs["quick1"]["quick"] is True
    assert "no quick cpu benchmark shapes" in str(stub_runs["quick1"]["skipped"])
    paths = [stub_runs["paths"][name] for name in ("full", "quick1", "quick2")]
    assert len(set(paths)) == 3 and all(os.path.isfile(p) for p in paths)
    device = stub_runs["full"]["device"]
    assert all(os.path.dirname(p) == os.path.join(str(stub_runs["out"]), device) for p in paths)


def test_bench_unknown_op_is_named(capsys):
    assert cli.main(["bench", "--ops", "nope", "--device", "cpu"]) == 2
    assert "unknown op(s) nope" in capsys.readouterr().err


def test_plot_writes_one_png_per_op(stub_runs, tmp_path, capsys):
    import os
    import shutil

    pytest.importorskip("matplotlib")
    path = shutil.copy(stub_runs["paths"]["full"], tmp_path / "run.json")
    assert cli.main(["plot", str(path)]) == 0  # beside the JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-stub_bytes_op.png", "run-stub_op.png", "run.json"]
    assert (tmp_path / "run-stub_op.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "plots")]) == 0
    assert sorted(os.listdir(tmp_path / "plots")) == ["run-stub_bytes_op.png", "run-stub_op.png"]
    assert "wrote" in capsys.readouterr().out


def test_plot_without_matplotlib_is_one_line(stub_runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it looks like
    assert cli.main(["plot", stub_runs["paths"]["full"]]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install fusednn[plot]" in err


def test_bench_rates_read_at_any_size():
    from fusednn.bench.runner import rate, significant

    assert rate(3.1e11, "FLOP") == "310 GFLOP/s" and rate(4.2e6, "FLOP") == "4.20 MFLOP/s"
    assert rate(1.234e12, "B") == "1.23 TB/s" and significant(0.012345) == "0.0123"


# --------------------------------------------------------------------------- train


# The convolutional models' fused ops are Triton kernels, which the test set-up runs through
# the interpreter on CPU tensors (seconds per layer): their train runs take the reference
# backend, so these tests check the command, and the models' tests check the kernels.
TRAIN_UNITS = {"lstm-lm": "tokens", "gru-classifier": "tokens", "conv-lstm-predictor": "frames",
               "resnet18": "images", "inception-net": "images"}


@pytest.mark.parametrize("model", TRAIN_UNITS)
def test_train_prints_losses_throughputs_and_memory(model, capsys, monkeypatch):
    import re

    from fusednn.models.tasks import TASKS

    unit = TRAIN_UNITS[model]
    assert TASKS[model].unit == unit
    if unit == "images":
        monkeypatch.setenv("FUSEDNN_BACKEND", "reference")
    assert cli.main(["train", model, "--steps", "3", "--batch-size", "2", "--device", "cpu", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith(f"{model} on cpu: ") and "batch 2, 3 steps" in out and "seed 1" in out
    runs = re.findall(rf"^(fusednn|torch  ) layers: loss (\d+\.\d+) -> (\d+\.\d+) \(held-out batch\), ([\d,]+) "
                      rf"{unit}/s \(2 timed steps, (\d+\.\d+) s\), ([\d,]+\.\d\d) MiB saved for backward$",
                      out, re.M)
    assert [r[0].strip() for r in runs] == ["fusednn", "torch"], out
    # Same initial weights, same batches: the same loss before training.
    assert runs[0][1] == runs[1][1]
    assert all(float(r[2]) > 0 and int(r[3].replace(",", "")) > 0 and float(r[5].replace(",", "")) > 0
               for r in runs)
    ratio = re.search(r"^throughput fusednn / torch layers: (\d+\.\d+)x", out, re.M)
    assert ratio and float(ratio.group(1)) > 0, out
    memory = re.search(r"^saved for backward fusednn / torch layers: (\d+\.\d+)x \(< 1 means fusednn keeps less\)$",
                       out, re.M)
    assert memory and float(memory.group(1)) > 0, out
    assert "peak memory" not in out  # CUDA only
    assert "3/3 loss" in captured.err  # the progress line's last state


def test_saved_for_backward_counts_each_storage_once():
    from fusednn.models.tasks import SavedForBackward

    weight = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(4, 5, requires_grad=True)
    with SavedForBackward([weight]) as saved:
        y = x @ weight  # saves x (weight excluded)
        z = (y.exp() * 2).sum()  # exp saves its output y.exp(); y * 2 saves nothing
        w = x[1:].sin()  # a view of x: x's storage again
    assert saved.bytes == 4 * 5 * 4 + 4 * 3 * 4
    assert z.requires_grad and w.requires_grad


def test_train_lists_its_models(capsys):
    from fusednn.models.tasks import TASKS

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, task in TASKS.items():
        assert name in out and task.description in out


@pytest.mark.parametrize("argv,message", [
    (["train"], "the following arguments are required: model"),
    (["train", "lstm"], "argument model: invalid choice: 'lstm'"),
    (["train", "lstm-lm", "--steps", "0"], "argument --steps: must be a positive integer; got '0'"),
    (["train", "lstm-lm", "--steps", "2.5"], "argument --steps: must be a positive integer; got '2.5'"),
    (["train", "gru-classifier", "--batch-size", "-4"], "argument --batch-size: must be a positive integer; got '-4'"),
    (["train", "conv-lstm-predictor", "--lr", "nan"], "argument --lr: must be a positive number; got 'nan'"),
    (["train", "lstm-lm", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["train", "lstm-lm", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
])
def test_train_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m fusednn"), err
    assert message in err


def test_train_bad_device_is_one_line(capsys):
    assert cli.main(["train", "lstm-lm", "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "python -m fusednn train: --device must be cpu or cuda; got 'gpu'"
