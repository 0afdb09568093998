"""fusednn.nn.LinearAttention: against the same attention written in plain torch around the
reference op (outputs, states, input, state and parameter gradients), decoding step by step
and continuing a sequence from a state, RetNet's decay buffer, parameters, repr and
argument errors. torch has no linear attention module, so this one is not a drop-in and
gets these tests instead of tests/test_module_db.py."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.registry import Sample

# float64 runs the reference (the module's plumbing at float64 precision); float32 (and
# float16 on CUDA) the kernels.
DEVICE_DTYPES = [("cpu", torch.float64)] + [(d, t) for d, t in testing.kernel_dtypes(registry.get("linear_attention"))
                                            if d == "cuda" or t == torch.float32]
E, H = 8, 2  # head size 4


class _TorchLinearAttention(torch.nn.Module):
    """The same attention in plain torch: F.linear projections around
    fusednn.reference.linear_attention, with RetNet's decay written out; parameters copied
    from a LinearAttention, same names."""

    def __init__(self, module: fusednn.nn.LinearAttention):
        super().__init__()
        self.heads, self.feature_map, self.causal = module.num_heads, module.feature_map, module.causal
        self.retnet = module.decay_kind == "retnet"
        for prefix in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, prefix, torch.nn.Module())
            for name, parameter in getattr(module, prefix).named_parameters():
                getattr(self, prefix).register_parameter(name, torch.nn.Parameter(parameter.detach().clone()))

    def _project(self, name, x):
        projection = getattr(self, name)
        return F.linear(x, projection.weight, getattr(projection, "bias", None))

    def forward(self, x, state=None, return_state=False):
        B, T, width = x.shape
        q, k, v = (self._project(name, x).reshape(B, T, self.heads, -1).permute(0, 2, 1, 3)
                   for name in ("q_proj", "k_proj", "v_proj"))
        decay = None
        if self.retnet:
            decay = torch.tensor([1.0 - 2.0 ** (-5 - h) for h in range(self.heads)], dtype=x.dtype)
        result = fusednn.reference.linear_attention(q, k, v, feature_map=self.feature_map, causal=self.causal,
                                                    decay=decay, initial_state=state,
                                                    output_final_state=return_state)
        o, final_state = result if return_state else (result, None)
        y = self._project("out_proj", o.permute(0, 2, 1, 3).reshape(B, T, width))
        return (y, final_state) if return_state else y


def _randn(*shape, requires_grad=True):
    return torch.randn(shape, dtype=torch.float64, requires_grad=requires_grad)


def _state(B, requires_grad=True):
    """A plausible (S, z): z positive, as sums of elu+1 features are."""
    S = _randn(B, H, E // H, E // H, requires_grad=False)
    z = torch.rand(B, H, E // H, dtype=torch.float64) + 0.5
    return S.requires_grad_(requires_grad), z.requires_grad_(requires_grad)


CONFIGS = {
    "elu-causal": dict(),
    "relu-retnet": dict(feature_map="relu", decay="retnet"),
    "elu-noncausal-no-bias": dict(causal=False, bias=False),
}


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_matches_plain_torch_around_the_reference(device, dtype, config):
    ours = fusednn.nn.LinearAttention(E, H, **config).double()
    theirs = _TorchLinearAttention(ours)
    x = _randn(2, 7, E)
    if config.get("causal", True):  # from a given state, returning the final one
        sample = Sample("linear_attention", (x, _state(2), True))
        outputs, inputs = 3, 3  # y, S, z; x, S_0, z_0
    else:
        sample = Sample("linear_attention", (x,))
        outputs, inputs = 1, 1
    results = testing.compare_modules(ours, theirs, sample, device, dtype)
    assert len(results) == outputs + inputs + len(list(ours.parameters()))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("decay", [None, "retnet"])
def test_steps_and_continued_sequences_are_the_forward(device, dtype, decay):
    """Decoding one position at a time from no state, and a sequence cut in two and continued
    from the first part's state, give the forward over the whole sequence and its final
    state (without a graph: inference)."""
    B, T = 2, 6
    module = fusednn.nn.LinearAttention(E, H, decay=decay, device=device, dtype=dtype)
    x = torch.randn(B, T, E, device=device, dtype=dtype)
    truth_module = _TorchLinearAttention(module).double()
    with torch.no_grad():
        truth, (S, z) = truth_module(x.double().cpu(), return_state=True)
        y, final = module(x, return_state=True)
        state, steps = None, []
        for t in range(T):
            y_t, state = module.step(x[:, t], state)
            steps.append(y_t)
        first, middle = module(x[:, :4], return_state=True)
        rest, continued = module(x[:, 4:], middle, return_state=True)
    testing.assert_close(y, truth, name="forward")
    testing.assert_close(torch.stack(steps, dim=1), truth, name="steps")
    testing.assert_close(torch.cat([first, rest], dim=1), truth, name="continued")
    for name, ours in (("forward", final), ("steps", state), ("continued", continued)):
        assert ours[0].dtype == ours[1].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        testing.assert_close(ours[0], S, name=f"S after the {name}")
        testing.assert_close(ours[1], z, name=f"z after the {name}")


def test_forward_is_the_op():
    module = fusednn.nn.LinearAttention(E, H, feature_map="relu", decay="retnet")
    x = torch.randn(2, 5, E)
    q, k, v = (p(x).reshape(2, 5, H, E // H).transpose(1, 2) for p in (module.q_proj, module.k_proj, module.v_proj))
    o = fusednn.ops.linear_attention(q, k, v, feature_map="relu", decay=module.decay)
    assert torch.equal(module(x), module.out_proj(o.transpose(1, 2).reshape(2, 5, E)))


def test_retnet_decay_is_a_float_buffer_out_of_the_state_dict():
    module = fusednn.nn.LinearAttention(16, 8, decay="retnet")
    expected = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(8)])
    assert module.decay.dtype == torch.float32 and torch.equal(module.decay, expected)
    assert dict(module.named_buffers()).keys() == {"decay"} and "decay" not in module.state_dict()
    # Half precision would round γ_h to 1 (bfloat16: heads 4 to 7): the decay stays float32.
    assert (expected.bfloat16() == 1).tolist() == [False] * 4 + [True] * 4
    for dtype in (torch.bfloat16, torch.float16):
        moved = fusednn.nn.LinearAttention(16, 8, decay="retnet").to(dtype)
        assert moved.q_proj.weight.dtype == dtype
        assert moved.decay.dtype == torch.float32 and torch.equal(moved.decay, expected)
    assert fusednn.nn.LinearAttention(16, 8, decay="retnet", dtype=torch.float16).decay.dtype == torch.float32
    doubled = module.double()
    assert doubled.decay.dtype == torch.float64 and torch.equal(doubled.decay, expected.double())
    assert fusednn.nn.LinearAttention(16, 8, decay="retnet", dtype=torch.float64).decay.dtype == torch.float64
    assert fusednn.nn.LinearAttention(16, 4).decay is None


def test_parameters_are_four_torch_linears():
    torch.manual_seed(5)
    ours = fusednn.nn.LinearAttention(12, 3)
    torch.manual_seed(5)
    torchs = [torch.nn.Linear(12, 12) for _ in range(4)]
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        f"{p}.{n}": (12, 12) if n == "weight" else (12,)
        for p in ("q_proj", "k_proj", "v_proj", "out_proj") for n in ("weight", "bias")}
    for mine, theirs in zip((ours.q_proj, ours.k_proj, ours.v_proj, ours.out_proj), torchs):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    assert set(fusednn.nn.LinearAttention(12, 3, bias=False).state_dict()) == {
        f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert ours.head_dim == 4


def test_repr():
    assert fusednn.nn.LinearAttention(16, 4).extra_repr() == "16, num_heads=4, feature_map='elu+1'"
    assert (fusednn.nn.LinearAttention(8, 2, "relu", causal=False, bias=False).extra_repr()
            == "8, num_heads=2, feature_map='relu', causal=False, bias=False")
    text = repr(fusednn.nn.LinearAttention(8, 2, decay="retnet"))
    assert text.startswith("LinearAttention(\n  8, num_heads=2, feature_map='elu+1', decay='retnet'\n"
                           "  (q_proj): Linear(")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(embed_dim=10, num_heads=4), ValueError, r"embed_dim must be divisible by num_heads = 4; got 10"),
    (dict(num_heads=0), ValueError, r"num_heads must be an int >= 1; got 0"),
    (dict(embed_dim=8.0), TypeError, r"embed_dim must be an int; got 8.0"),
    (dict(feature_map="softmax"), ValueError, r"feature_map must be one of 'elu\+1', 'relu', 'identity'; got"),
    (dict(decay="xpos"), ValueError, r"decay must be one of None, 'retnet'; got 'xpos'"),
    (dict(decay="retnet", causal=False), ValueError, r"decay must be None when causal=False"),
    (dict(causal=1), TypeError, r"causal must be a bool; got 1"),
])
def test_constructor_errors(kwargs, error, match):
    arguments = {**dict(embed_dim=8, num_heads=2), **kwargs}
    with pytest.raises(error, match=r"fusednn\.nn\.LinearAttention: " + match):
        fusednn.nn.LinearAttention(**arguments)


@pytest.mark.parametrize("method, args, error, match", [
    ("forward", (torch.randn(2, 8),), ValueError, r"x must be 3-D \[B, T, E\]; got shape \(2, 8\)"),
    ("forward", (torch.randn(2, 3, 6),), ValueError, r"x must be \[B, T, E\] with E = embed_dim = 8; got shape"),
    ("forward", (torch.randn(2, 3, 8, dtype=torch.float64),), TypeError,
     r"x must be of the module's dtype float32; got float64"),
    ("forward", (torch.randn(2, 3, 8).to("meta"),), ValueError, r"x must be on the module's device cpu; got meta"),
    ("step", (torch.randn(2, 1, 8), None), ValueError, r"x_t must be 2-D \[B, E\]; got shape \(2, 1, 8\)"),
    ("step", (torch.randn(2, 6), None), ValueError, r"x_t must be \[B, E\] with E = embed_dim = 8; got shape"),
])
def test_input_errors(method, args, error, match):
    module = fusednn.nn.LinearAttention(8, 2)
    where = r"fusednn\.nn\.LinearAttention" + (r"\.step" if method == "step" else "")
    with pytest.raises(error, match=where + ": " + match):
        getattr(module, method)(*args)


def test_non_causal_has_no_state():
    module = fusednn.nn.LinearAttention(8, 2, causal=False)
    with pytest.raises(NotImplementedError, match=r"fusednn\.nn\.LinearAttention\.step: step needs causal=True"):
        module.step(torch.randn(2, 8), None)
    with pytest.raises(ValueError, match=r"return_state must be False when causal=False"):
        module(torch.randn(2, 3, 8), return_state=True)


def test_state_errors_come_from_the_op():
    module = fusednn.nn.LinearAttention(8, 2)
    with pytest.raises(ValueError, match=r"fusednn\.ops\.linear_attention: initial_state"):
        module(torch.randn(2, 3, 8), (torch.zeros(2, 2, 4, 3), torch.zeros(2, 2, 4)))
