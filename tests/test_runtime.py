"""Backend selection and the testing helpers themselves."""

import os

import pytest
import torch

import fusednn
from fusednn import _runtime, testing


def test_use_backend_nests_and_restores():
    assert _runtime.requested_backend() == os.environ.get("FUSEDNN_BACKEND", "auto")
    with fusednn.use_backend("reference"):
        assert _runtime.requested_backend() == "reference"
        with fusednn.use_backend("cpu"):
            assert _runtime.requested_backend() == "cpu"
        assert _runtime.requested_backend() == "reference"
    assert _runtime.requested_backend() == os.environ.get("FUSEDNN_BACKEND", "auto")


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with fusednn.use_backend("fast"):
            pass


def test_env_var_backend(monkeypatch):
    monkeypatch.setenv("FUSEDNN_BACKEND", "reference")
    assert _runtime.requested_backend() == "reference"
    monkeypatch.setenv("FUSEDNN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FUSEDNN_BACKEND"):
        _runtime.requested_backend()


def test_auto_prefers_cpp_on_cpu_and_reference_without_kernel(monkeypatch):
    monkeypatch.delenv("FUSEDNN_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert _runtime.select_backend("x", cpu, ("cuda", "cpu")) == "cpu"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _runtime.select_backend("x", cpu, ("triton",)) == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _runtime.select_backend("x", cpu, ("triton",)) == "triton"


def test_forced_backend_that_cannot_serve_raises(monkeypatch):
    monkeypatch.delenv("FUSEDNN_BACKEND", raising=False)
    cpu = torch.device("cpu")
    with fusednn.use_backend("cuda"):
        with pytest.raises(NotImplementedError, match="backend 'cuda' cannot run here"):
            _runtime.select_backend("lstm", cpu, ("cuda", "cpu"))
    with fusednn.use_backend("cpu"):
        with pytest.raises(NotImplementedError, match="no cpu kernel"):
            _runtime.select_backend("layer_norm", cpu, ("triton",))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fusednn.use_backend("triton"):
        with pytest.raises(NotImplementedError, match="TRITON_INTERPRET"):
            _runtime.select_backend("layer_norm", cpu, ("triton",))


def test_poisoned_outputs_are_nan():
    assert _runtime.poison_enabled()  # conftest turns it on for every test
    assert torch.isnan(_runtime.empty(3, 4)).all()
    assert fusednn.build_info()["backends"][0] == "cpu"
    assert _runtime.extension()._poison_outputs_enabled()
    with testing.poison_outputs(False):
        assert not _runtime.extension()._poison_outputs_enabled()
    assert _runtime.extension()._poison_outputs_enabled()


def test_assert_close_catches_errors():
    ref = torch.randn(100, dtype=torch.float64)
    testing.assert_close(ref.float(), ref)
    with pytest.raises(AssertionError, match="relative error"):
        testing.assert_close((ref + 1e-3).float(), ref)
    bad = ref.float().clone()
    bad[7] = float("nan")
    with pytest.raises(AssertionError):
        testing.assert_close(bad, ref)


def test_two_x_rule():
    ref = torch.randn(1000, dtype=torch.float64)
    lowp = ref.half()
    testing.assert_close(lowp, ref, lowp_baseline=lowp)
    with pytest.raises(AssertionError, match="exceeds 2 x"):
        testing.assert_close((ref + 0.05).half(), ref, lowp_baseline=lowp)
    with pytest.raises(ValueError, match="lowp_baseline"):
        testing.assert_close(lowp, ref)


def test_build_info_fields():
    info = fusednn.build_info()
    for key in ("backends", "cuda", "cuda_archs", "cxx_compiler", "torch"):
        assert key in info
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
