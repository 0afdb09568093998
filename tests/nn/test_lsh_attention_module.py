"""fusednn.nn.LSHSelfAttention: against the same layer written with torch's linear layers around
the plain-PyTorch LSH reference (outputs, input and parameter gradients), the op it calls,
causality through the projections, parameters, repr and argument errors. torch has no LSH
attention module, so this one is not a drop-in and gets these tests instead of
tests/test_module_db.py.

The comparisons run in float32 and float64 only: float16/bfloat16 rounding of the projected qk
could move a token across a bucket border, and then the float64 truth sorts it elsewhere."""

import pytest
import torch

import fusednn
from fusednn import registry, testing
from fusednn.reference.lsh_attention import lsh_attention as reference_lsh_attention
from fusednn.registry import Sample, View

DEVICE_DTYPES = [pytest.param(d, t, id=f"{d}-{str(t)[6:]}")
                 for d, t in testing.kernel_dtypes(registry.get("lsh_attention")) + [("cpu", torch.float64)]
                 if t in (torch.float32, torch.float64)]
E, H = 16, 2  # head dim 8


class _TorchLSHSelfAttention(torch.nn.Module):
    """The same layer with F.linear and the reference op; parameters copied from an
    LSHSelfAttention, same names."""

    def __init__(self, module: fusednn.nn.LSHSelfAttention):
        super().__init__()
        self.options = dict(n_buckets=module.n_buckets, n_hashes=module.n_hashes, chunk_size=module.chunk_size,
                            causal=module.causal)
        self.num_heads = module.num_heads
        for name in ("qk_proj", "v_proj", "out_proj"):
            linear = torch.nn.Linear(module.embed_dim, module.embed_dim, dtype=torch.float64)
            linear.load_state_dict(getattr(module, name).state_dict())
            setattr(self, name, linear)

    def forward(self, x, rotations=None):
        B, T, _ = x.shape

        def heads(t):
            return t.reshape(B, T, self.num_heads, -1).permute(0, 2, 1, 3)

        out = reference_lsh_attention(heads(self.qk_proj(x)), heads(self.v_proj(x)), rotations=rotations,
                                      **self.options)
        return self.out_proj(out.permute(0, 2, 1, 3).reshape(B, T, -1))


CONFIGS = {
    "two-rounds": dict(n_buckets=4, n_hashes=2, chunk_size=5),
    "causal-one-round": dict(n_buckets=4, n_hashes=1, chunk_size=5, causal=True),
}


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_matches_torch_linear_layers_around_the_reference(device, dtype, config):
    ours = fusednn.nn.LSHSelfAttention(E, H, dtype=torch.float64, **config)
    theirs = _TorchLSHSelfAttention(ours)
    rotations = torch.randn(config["n_hashes"], E // H, config["n_buckets"] // 2, dtype=torch.float64)
    x = View(torch.randn(10, 1, E, dtype=torch.float64, requires_grad=True), lambda t: t.transpose(0, 1))
    results = testing.compare_modules(ours, theirs, Sample("lsh", (x, rotations)), device, dtype)
    assert len(results) == 1 + 1 + len(list(ours.parameters()))


def test_forward_is_the_op_on_the_projections():
    torch.manual_seed(0)
    module = fusednn.nn.LSHSelfAttention(E, H, n_buckets=6, n_hashes=2, chunk_size=4, causal=True)
    x, rotations = torch.randn(1, 9, E), torch.randn(2, E // H, 3)
    with torch.no_grad():
        qk, v = (p(x).reshape(1, 9, H, E // H).transpose(1, 2) for p in (module.qk_proj, module.v_proj))
        out = fusednn.ops.lsh_attention(qk, v, n_buckets=6, n_hashes=2, chunk_size=4, causal=True,
                                        rotations=rotations)
        assert torch.equal(module(x, rotations), module.out_proj(out.transpose(1, 2).reshape(1, 9, E)))
        torch.manual_seed(4)
        drawn = module(x)
        torch.manual_seed(4)
        assert torch.equal(drawn, module(x, torch.randn(2, E // H, 3)))


def test_causal_layer_ignores_later_tokens():
    module = fusednn.nn.LSHSelfAttention(E, H, n_buckets=4, n_hashes=2, chunk_size=4, causal=True,
                                         dtype=torch.float64)
    x = torch.randn(1, 12, E, dtype=torch.float64, requires_grad=True)
    y = module(x, torch.randn(2, E // H, 2, dtype=torch.float64))
    (grad,) = torch.autograd.grad(y[:, 5].sum(), x)
    assert torch.all(grad[:, 6:] == 0) and torch.all(grad[:, :6].abs().sum(-1) > 0)


def test_parameters_and_repr():
    module = fusednn.nn.LSHSelfAttention(E, H, n_buckets=8)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {
        f"{name}.{kind}": (E, E) if kind == "weight" else (E,)
        for name in ("qk_proj", "v_proj", "out_proj") for kind in ("weight", "bias")}
    assert set(fusednn.nn.LSHSelfAttention(E, H, n_buckets=8, bias=False).state_dict()) == {
        "qk_proj.weight", "v_proj.weight", "out_proj.weight"}
    assert (fusednn.nn.LSHSelfAttention(E, H, n_buckets=8, n_hashes=4, causal=True).extra_repr()
            == "embed_dim=16, num_heads=2, n_buckets=8, n_hashes=4, chunk_size=64, causal=True")
    half = fusednn.nn.LSHSelfAttention(E, H, n_buckets=8, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_heads=3), ValueError, r"num_heads must be a divisor of embed_dim 16; got 3"),
    (dict(embed_dim=0), ValueError, r"embed_dim must be an int >= 1; got 0"),
    (dict(n_buckets=5), ValueError, r"n_buckets must be an even int >= 2 .*; got 5"),
    (dict(n_hashes=0), ValueError, r"n_hashes must be an int >= 1; got 0"),
    (dict(chunk_size=2.0), TypeError, r"chunk_size must be an int; got 2\.0"),
    (dict(causal=None), TypeError, r"causal must be a bool; got None"),
])
def test_constructor_errors(kwargs, error, match):
    arguments = {**dict(embed_dim=E, num_heads=H, n_buckets=4), **kwargs}
    with pytest.raises(error, match=r"fusednn\.nn\.LSHSelfAttention: " + match):
        fusednn.nn.LSHSelfAttention(**arguments)


@pytest.mark.parametrize("x, error, match", [
    (torch.randn(9, E), ValueError, r"x must be 3-D \[B, T, E\]; got shape \(9, 16\)"),
    (torch.randn(1, 9, 8), ValueError, r"x must be \[B, T, E\] with E = embed_dim = 16; got shape \(1, 9, 8\)"),
    (torch.randn(1, 9, E, dtype=torch.float64), TypeError, r"x must be of the module's dtype float32; got float64"),
    (torch.randn(1, 9, E, device="meta"), ValueError, r"x must be on the module's device cpu; got meta"),
])
def test_forward_errors(x, error, match):
    module = fusednn.nn.LSHSelfAttention(E, H, n_buckets=4)
    with pytest.raises(error, match=r"fusednn\.nn\.LSHSelfAttention: " + match):
        module(x)
    with pytest.raises(ValueError, match=r"fusednn\.ops\.lsh_attention: rotations must be \[n_hashes, D, "):
        module(torch.randn(1, 9, E), torch.randn(1, E, 2))
