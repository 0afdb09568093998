"""Backend selection, output poisoning, the validation vocabulary and the comparison
harness itself (it must reject what is wrong)."""

import os
import threading

import pytest
import torch

import fusednn
from fusednn import _runtime, _validate, registry, testing

# --------------------------------------------------------------------------- backends


def test_use_backend_nests_and_restores():
    assert _runtime.requested_backend() == os.environ.get("FUSEDNN_BACKEND", "auto")
    with fusednn.use_backend("reference"):
        assert _runtime.requested_backend() == "reference"
        with fusednn.use_backend("cpu"):
            assert _runtime.requested_backend() == "cpu"
        assert _runtime.requested_backend() == "reference"
    assert _runtime.requested_backend() == os.environ.get("FUSEDNN_BACKEND", "auto")


def test_use_backend_is_per_thread():
    """A block in one thread leaves the others alone, and overlapping blocks in two threads
    leave nothing behind."""
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def worker():
        with fusednn.use_backend("reference"):
            inside.set()
            release.wait(10)
            seen["worker"] = _runtime.requested_backend()
        seen["worker after"] = _runtime.requested_backend()

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(10)
    seen["main while the worker is inside"] = _runtime.requested_backend()
    with fusednn.use_backend("cpu"):
        release.set()
        thread.join(10)
        seen["main"] = _runtime.requested_backend()
    assert seen == {"worker": "reference", "main while the worker is inside": "auto", "main": "cpu",
                    "worker after": "auto"}
    assert _runtime.requested_backend() == "auto"


def test_use_backend_is_traced_by_torch_compile():
    """A compiled function follows the backend of the calling thread (recompiling on a change)."""
    info = registry.get("lstm")

    def f(x):
        return x * 2 if info.select(x.device, x.dtype) == "reference" else x * 3

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    x = torch.ones(2)
    assert compiled(x).tolist() == [3.0, 3.0]
    with fusednn.use_backend("reference"):
        assert compiled(x).tolist() == [2.0, 2.0]
    assert compiled(x).tolist() == [3.0, 3.0]


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="fusednn.use_backend: name must be one of .*; got 'fast'"):
        with fusednn.use_backend("fast"):
            pass


def test_env_var_backend(monkeypatch):
    monkeypatch.setenv("FUSEDNN_BACKEND", "reference")
    assert _runtime.requested_backend() == "reference"
    monkeypatch.setenv("FUSEDNN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FUSEDNN_BACKEND must be one of .*; got 'gpu'"):
        _runtime.requested_backend()


def test_auto_prefers_cpp_on_cpu_and_the_reference_without_a_kernel(monkeypatch):
    monkeypatch.delenv("FUSEDNN_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert registry.get("lstm").select(cpu, torch.float32) == "cpu"
    norm = registry.get("layer_norm")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert norm.select(cpu, torch.float32) == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert norm.select(cpu, torch.float32) == "triton"
    assert norm.select(cpu, torch.bfloat16) == "reference"  # the interpreter never gets bfloat16
    assert registry.get("attention").select(cpu, torch.float64) == "reference"  # no float64 kernel


def test_poisoned_outputs_are_nan():
    assert _runtime.poison_enabled()  # conftest turns it on for every test
    assert torch.isnan(_runtime.empty(3, 4)).all()
    assert fusednn.build_info()["backends"][0] == "cpu"
    assert _runtime.extension()._poison_outputs_enabled()
    with testing.poison_outputs(False):
        assert not _runtime.extension()._poison_outputs_enabled()
    assert _runtime.extension()._poison_outputs_enabled()


def test_build_info_fields():
    info = fusednn.build_info()
    for key in ("backends", "cuda", "cuda_archs", "cxx_compiler", "torch"):
        assert key in info
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]


# --------------------------------------------------------------------------- validation vocabulary


def test_vocabulary_messages_and_classes():
    args = _validate.Args("fusednn.ops.example")
    with pytest.raises(TypeError, match=r"^fusednn.ops.example: n must be an int; got True$"):
        args.integer("n", True)
    with pytest.raises(ValueError, match=r"^fusednn.ops.example: n must be an int in \[1, 4\]; got 7$"):
        args.integer("n", 7, minimum=1, maximum=4)
    with pytest.raises(ValueError, match=r"^fusednn.ops.example: p must be a finite float in \[0.0, 1.0\); got nan$"):
        args.real("p", float("nan"), minimum=0.0, maximum=1.0, max_inclusive=False)
    with pytest.raises(ValueError, match=r"^fusednn.ops.example: mode must be one of 'a', 'b'; got 'c'$"):
        args.choice("mode", "c", ("a", "b"))
    with pytest.raises(TypeError, match=r"^fusednn.ops.example: x must be a tensor \[B, D\]; got a numpy.ndarray$"):
        args.tensor("x", torch.zeros(2).numpy(), "[B, D]")
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"^fusednn.ops.example: w must be of x's dtype float32; got float64$"):
        args.tensor("w", torch.zeros(3, dtype=torch.float64), like=x, like_name="x")
    with pytest.raises(ValueError, match=r"^fusednn.ops.example: w must be \[D\] = \(3,\); got shape \(4,\)$"):
        args.shape("w", torch.zeros(4), (3,), "[D]")
    with pytest.raises(TypeError, match=r"^fusednn.ops.example: sizes must be a list of ints; got an element True$"):
        args.int_list("sizes", [1, True])
    # catchable as what torch raises for the same mistakes, too
    for call in (lambda: args.integer("n", 7, maximum=4), lambda: args.integer("n", "7")):
        with pytest.raises(RuntimeError):
            call()


def test_accumulate_dtype():
    assert _validate.accumulate_dtype(torch.float64) == torch.float64
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert _validate.accumulate_dtype(dtype) == torch.float32


# --------------------------------------------------------------------------- the comparison harness


def _expected(scale, n=1000):
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * scale


def _wrong(kind, expected, dtype):
    """A result that is wrong in the given way, in ``dtype``."""
    if kind == "zeros":
        return torch.zeros_like(expected, dtype=dtype)
    if kind == "sign-flip":
        return (-expected).to(dtype)
    if kind == "one-percent":
        return (expected * 1.01).to(dtype)
    if kind == "nan":
        out = expected.to(dtype).clone()
        out[17] = float("nan")
        return out
    if kind == "unwritten":  # a poisoned element a kernel forgot to write
        with testing.poison_outputs():
            out = _runtime.empty(expected.shape, dtype=dtype)
        out[1:] = expected[1:].to(dtype)
        return out
    if kind == "wrong-shape":
        return expected[:-1].to(dtype)
    raise AssertionError(kind)


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("scale", [1e-4, 1e2])
@pytest.mark.parametrize("kind", ["zeros", "sign-flip", "one-percent", "nan", "unwritten", "wrong-shape"])
def test_harness_rejects(kind, scale, dtype):
    expected = _expected(scale)
    actual = _wrong(kind, expected, dtype)
    # PyTorch's computation in the low precision: the exact values rounded to it (the best any can do)
    baseline = expected.to(dtype) if dtype in testing.ULP else None
    with pytest.raises(AssertionError):
        testing.assert_close(actual, expected, lowp_baseline=baseline)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("scale", [1e-4, 1e2])
def test_harness_accepts_a_correctly_rounded_result(scale, dtype):
    expected = _expected(scale)
    baseline = expected.to(dtype) if dtype in testing.ULP else None
    # a result computed in a wider precision and rounded once (float64: with a few ulps of noise)
    actual = expected * (1 + 1e-14) if dtype == torch.float64 else expected.float().to(dtype)
    testing.assert_close(actual, expected, lowp_baseline=baseline)


def test_harness_low_precision_floor_scales_with_the_tensor():
    """An all-zero float16 result must fail against a small expected tensor (the floor is
    relative to the expected scale, not an absolute ulp)."""
    expected = _expected(2e-4)
    with pytest.raises(AssertionError):
        testing.assert_close(torch.zeros(1000, dtype=torch.float16), expected, lowp_baseline=expected.half())


def test_harness_infinities_must_match():
    expected = torch.tensor([float("-inf"), 1.0, 2.0], dtype=torch.float64)
    testing.assert_close(expected.float(), expected)
    with pytest.raises(AssertionError, match="infinite"):
        testing.assert_close(torch.tensor([0.0, 1.0, 2.0]), expected)


def test_harness_needs_a_baseline_for_low_precision():
    with pytest.raises(ValueError, match="lowp_baseline"):
        testing.assert_close(torch.ones(3, dtype=torch.float16), torch.ones(3, dtype=torch.float64))


def test_no_pytest_plugin_of_the_host_is_loaded(request):
    """pytest runs with --disable-plugin-autoload (pyproject.toml): plugins installed on the
    machine (pytest-benchmark, hypothesis, ...) do not change the test session. The one
    plugin the project loads itself is pytest-xdist, named with -p by make test."""
    loaded = {dist.project_name for _, dist in request.config.pluginmanager.list_plugin_distinfo()}
    assert loaded <= {"pytest-xdist"}


def test_device_dtypes_by_kind_of_kernel(monkeypatch):
    assert testing.device_dtypes("cpp")[:2] == [("cpu", torch.float64), ("cpu", torch.float32)]
    monkeypatch.setattr(_runtime, "interpreter_enabled", lambda: False)
    assert all(device == "cuda" for device, _ in testing.device_dtypes("triton"))
    with pytest.raises(ValueError, match="kernel must be 'cpp' or 'triton'; got 'cuda'"):
        testing.device_dtypes("cuda")
