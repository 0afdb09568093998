"""causal_conv1d / causal_conv1d_update beyond what every op gets from the registry
(tests/test_registry.py): the reference against torch's conv1d, a sequence cut into chunks
or continued step by step equal to the whole, the in-place state update, the layouts
(a [B, L, D] input read in place), broadcast output gradients, several backward programs
along time, determinism, and the zero-length sequence."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.kernels import causal_conv1d as kernels
from fusednn.reference.causal_conv1d import causal_conv1d as reference_conv
from fusednn.reference.causal_conv1d import causal_conv1d_update as reference_update
from fusednn.testing import assert_close

OP = registry.get("causal_conv1d")
PAIRS = testing.kernel_dtypes(OP)  # (device, dtype) pairs where a kernel runs here
FLOAT32_PAIRS = [(d, t) for d, t in PAIRS if t == torch.float32]


def _tensors(B, D, L, W, device="cpu", dtype=torch.float64):
    def randn(*shape, scale=1.0):
        return scale * torch.randn(shape, dtype=dtype, device=device)

    return randn(B, D, L), randn(D, W, scale=W**-0.5), randn(D, scale=0.5), randn(B, D, W - 1)


def _close(actual, expected64, name, baseline=None):
    """actual against the float64 ``expected64``: the dtype's rule (float16: 2x the baseline's error)."""
    assert_close(actual, expected64, name=name, lowp_baseline=baseline)


@pytest.mark.parametrize("W", [2, 4, 8])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_reference_is_torchs_conv1d(W, activation):
    x, weight, bias, state = _tensors(2, 5, 11, W)
    expected = F.conv1d(F.pad(x, (W - 1, 0)), weight.unsqueeze(1), bias, groups=5)
    if activation == "silu":
        expected = F.silu(expected)
    torch.testing.assert_close(reference_conv(x, weight, bias, activation=activation), expected, rtol=0, atol=0)
    # with an initial state: the state stands in for the zeros of the padding
    xpad = torch.cat([state, x], dim=-1)
    expected = F.conv1d(xpad, weight.unsqueeze(1), bias, groups=5)
    if activation == "silu":
        expected = F.silu(expected)
    y, final = reference_conv(x, weight, bias, activation=activation, initial_state=state, return_final_state=True)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(final, xpad[..., -(W - 1):], rtol=0, atol=0)


@pytest.mark.parametrize("device, dtype", PAIRS)
@pytest.mark.parametrize("W, prefix", [(4, 1), (3, 6), (8, 5)], ids=["W4-prefix1", "W3-prefix6", "W8-prefix5"])
def test_prefix_then_steps_is_the_whole_sequence(device, dtype, W, prefix):
    """A prefix through causal_conv1d (return_final_state), then one causal_conv1d_update per
    position, gives what causal_conv1d gives over the whole sequence; the state after the
    last step is the whole sequence's final state. A prefix shorter than W-1 carries zeros."""
    B, D, L = 2, 16, 9
    x, weight, bias, _ = _tensors(B, D, L, W)
    expected = reference_conv(x, weight, bias, activation="silu")
    cast = dict(device=device, dtype=dtype)
    xs, ws, bs = x.to(**cast), weight.to(**cast), bias.to(**cast)
    y_prefix, state = fusednn.ops.causal_conv1d(xs[..., :prefix], ws, bs, activation="silu", return_final_state=True)
    steps = [fusednn.ops.causal_conv1d_update(xs[..., t], state, ws, bs, "silu") for t in range(prefix, L)]
    stitched = torch.cat([y_prefix, torch.stack(steps, dim=-1)], dim=-1)
    whole, final = fusednn.ops.causal_conv1d(xs, ws, bs, activation="silu", return_final_state=True)
    baseline = None
    if dtype in (torch.float16, torch.bfloat16):
        baseline = reference_conv(xs, ws, bs, activation="silu")
    _close(stitched, expected, "prefix then steps", baseline)
    _close(whole, expected, "whole sequence", baseline)
    assert torch.equal(state, final)  # copies of x: exact
    assert torch.equal(final, xs[..., L - (W - 1):])


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_chunks_continue_the_sequence_with_gradients(device, dtype):
    """Chunks chained through final_state -> initial_state give the whole sequence's output,
    and its gradients: the first chunk's x gets them through the final state's gradient. The
    first chunk is shorter than W-1, so its final state mixes initial_state and x."""
    B, D, L, W, first = 1, 5, 13, 5, 2
    x, weight, bias, state = _tensors(B, D, L, W)
    leaves64 = [t.clone().requires_grad_() for t in (x, weight, bias, state)]
    whole = reference_conv(*leaves64[:3], activation="silu", initial_state=leaves64[3], return_final_state=True)
    grad_y, grad_final = torch.randn_like(whole[0]), torch.randn_like(whole[1])
    expected = torch.autograd.grad(whole, leaves64, (grad_y, grad_final))

    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, weight, bias, state)]
    xs, ws, bs, s0 = leaves
    y1, s1 = fusednn.ops.causal_conv1d(xs[..., :first], ws, bs, activation="silu", initial_state=s0,
                                       return_final_state=True)
    y2, s2 = fusednn.ops.causal_conv1d(xs[..., first:], ws, bs, activation="silu", initial_state=s1,
                                       return_final_state=True)
    y = torch.cat([y1, y2], dim=-1)
    _close(y, whole[0].detach(), "y")
    _close(s2, whole[1].detach(), "final_state")
    grads = torch.autograd.grad((y, s2), leaves, (grad_y.to(device=device, dtype=dtype),
                                                  grad_final.to(device=device, dtype=dtype)))
    for name, got, want in zip(("x", "weight", "bias", "initial_state"), grads, expected):
        _close(got, want, f"grad {name}")


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_update_shifts_the_state_in_place(device, dtype):
    """conv_state is updated in its own storage, through its strides (here a [B, W-1, D]
    buffer seen transposed, inside a larger one that must stay untouched)."""
    B, D, W = 3, 7, 4
    buffer = torch.randn(B, W + 1, D, device=device, dtype=dtype)
    state = buffer[:, 1:W].transpose(1, 2)  # [B, D, W-1], strided
    before = buffer.clone()
    x_t = torch.randn(B, D, device=device, dtype=dtype)
    weight = torch.randn(D, W, device=device, dtype=dtype)
    expected_state = state.double().clone()
    expected = reference_update(x_t.double(), expected_state, weight.double(), None, None)
    y = fusednn.ops.causal_conv1d_update(x_t, state, weight)
    _close(y, expected, "y_t")
    assert state.data_ptr() == buffer[:, 1:W].data_ptr()
    assert torch.equal(state[..., :-1], before[:, 2:W].transpose(1, 2))
    assert torch.equal(state[..., -1], x_t)
    assert torch.equal(buffer[:, 0], before[:, 0]) and torch.equal(buffer[:, W], before[:, W])
    assert torch.equal(state.double(), expected_state)


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_update_gradients_come_from_the_reference(device, dtype):
    """The update kernel has no backward: asking for a gradient runs the reference (no
    fusednn op is called), which still updates the state in place."""
    B, D, W = 2, 5, 3
    x_t = torch.randn(B, D, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(D, W, device=device, dtype=dtype, requires_grad=True)
    state = torch.randn(B, D, W - 1, device=device, dtype=dtype)
    old = state.clone()
    with testing.recording_fusednn_calls() as calls:
        y = fusednn.ops.causal_conv1d_update(x_t, state, weight, None, "silu")
    assert not calls
    assert torch.equal(state, torch.cat([old[..., 1:], x_t.detach()[..., None]], dim=-1))
    grad_x, grad_w = torch.autograd.grad(y.sum(), (x_t, weight))
    x64, w64 = x_t.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    expected = torch.autograd.grad(reference_update(x64, old.double(), w64, None, "silu").sum(), (x64, w64))
    _close(grad_x, expected[0], "grad x_t")
    _close(grad_w, expected[1], "grad weight")
    # without grad mode the kernel runs
    with torch.no_grad(), testing.recording_fusednn_calls() as calls:
        fusednn.ops.causal_conv1d_update(x_t, state, weight, None, "silu")
    assert [c.op for c in calls] == [torch.ops.fusednn.causal_conv1d_update.default]


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_channels_contiguous_input_is_read_in_place(device, dtype, monkeypatch):
    """A [B, L, D] tensor transposed to [B, D, L] reaches the kernels as it is (no copy), and
    y and grad x come in its layout; a contiguous x gives contiguous ones."""
    seen = []
    forward, backward = kernels.causal_conv1d_forward, kernels.causal_conv1d_backward

    def recording_forward(x, *args, **kwargs):
        seen.append((x.data_ptr(), x.stride()))
        return forward(x, *args, **kwargs)

    def recording_backward(grad_y, grad_final_state, x, *args, **kwargs):
        seen.append((x.data_ptr(), x.stride()))
        return backward(grad_y, grad_final_state, x, *args, **kwargs)

    monkeypatch.setattr(kernels, "causal_conv1d_forward", recording_forward)
    monkeypatch.setattr(kernels, "causal_conv1d_backward", recording_backward)
    B, L, D, W = 2, 9, 6, 4
    base = torch.randn(B, L, D, device=device, dtype=dtype)
    x = base.transpose(1, 2).requires_grad_()
    weight = torch.randn(D, W, device=device, dtype=dtype)
    y = fusednn.ops.causal_conv1d(x, weight, activation="silu")
    (grad_x,) = torch.autograd.grad(y, x, torch.randn(B, L, D, device=device, dtype=dtype).transpose(1, 2))
    assert seen == [(base.data_ptr(), x.stride())] * 2
    assert y.transpose(1, 2).is_contiguous() and grad_x.transpose(1, 2).is_contiguous()
    contiguous = x.detach().contiguous().requires_grad_()
    y = fusednn.ops.causal_conv1d(contiguous, weight)
    (grad_x,) = torch.autograd.grad(y, contiguous, torch.randn_like(y))
    assert y.is_contiguous() and grad_x.is_contiguous()


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_broadcast_output_gradient(device, dtype):
    """grad_y may arrive broadcast (stride 0 along time, from a mean over it)."""
    x, weight, bias, state = _tensors(2, 5, 11, 4)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, weight, bias, state)]
    y = fusednn.ops.causal_conv1d(*leaves[:3], activation="silu", initial_state=leaves[3])
    grads = torch.autograd.grad(y.mean(dim=-1).sum(), leaves)
    leaves64 = [t.clone().requires_grad_() for t in (x, weight, bias, state)]
    y64 = reference_conv(*leaves64[:3], activation="silu", initial_state=leaves64[3])
    expected = torch.autograd.grad(y64.mean(dim=-1).sum(), leaves64)
    for name, got, want in zip(("x", "weight", "bias", "initial_state"), grads, expected):
        _close(got, want, f"grad {name}")


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_several_backward_programs_along_time(device, dtype, monkeypatch):
    """Short tiles and one time block per backward program: the weight and bias gradients
    are sums of many partial rows, and only the first program writes grad initial_state."""
    monkeypatch.setattr(kernels, "_tile", lambda x, backward: (8, 4))
    monkeypatch.setattr(kernels, "_backward_chunks", lambda device, blocks, others: (max(1, blocks), 1))
    x = torch.randn(2, 6, 21, dtype=torch.float64, requires_grad=True)
    weight = (0.5 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    sample = registry.Sample("short-tiles", (x, weight, bias), dict(initial_state=state, return_final_state=True))
    testing.compare_sample(OP, sample, device, dtype)


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_backward_is_deterministic(device, dtype):
    x, weight, bias, state = (t.to(device=device, dtype=dtype).requires_grad_() for t in _tensors(2, 5, 40, 4))
    grad_y = torch.randn(2, 5, 40, device=device, dtype=dtype)

    def grads():
        y = fusednn.ops.causal_conv1d(x, weight, bias, initial_state=state)
        return torch.autograd.grad(y, (x, weight, bias, state), grad_y)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS + [("cpu", torch.float64)])
def test_zero_length_sequence(device, dtype):
    """L = 0: y is [B, D, 0]; the final state is the initial state (zeros without one), and
    its gradient is the initial state's. torch's conv1d refuses an input shorter than its
    kernel, so this is the op's own definition."""
    B, D, W = 2, 3, 4
    x = torch.randn(B, D, 0, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(D, W, device=device, dtype=dtype, requires_grad=True)
    state = torch.randn(B, D, W - 1, device=device, dtype=dtype, requires_grad=True)
    y, final = fusednn.ops.causal_conv1d(x, weight, initial_state=state, return_final_state=True)
    assert y.shape == (B, D, 0)
    assert torch.equal(final, state.detach())
    grad_final = torch.randn_like(final)
    grad_state, grad_weight = torch.autograd.grad(final, (state, weight), grad_final, allow_unused=True)
    assert torch.equal(grad_state, grad_final)
    assert grad_weight is None or torch.equal(grad_weight, torch.zeros_like(weight))
    _, final = fusednn.ops.causal_conv1d(x, weight, return_final_state=True)
    assert torch.equal(final, torch.zeros(B, D, W - 1, device=device, dtype=dtype))


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_double_backward(device, dtype):
    """create_graph=True gives a differentiable first gradient (through the reference): the
    registry's gradgradcheck runs only where a kernel takes float64, which this op's do not."""
    tensors = _tensors(2, 3, 6, 3)

    def second_derivatives(leaves, op):
        x, weight, bias, state = leaves
        y, final = op(x, weight, bias, activation="silu", initial_state=state, return_final_state=True)
        grads = torch.autograd.grad((y * y).sum() + (final * final).sum(), leaves, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in grads), leaves)

    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]
    got = second_derivatives(leaves, fusednn.ops.causal_conv1d)
    expected = second_derivatives([t.clone().requires_grad_() for t in tensors], reference_conv)
    for name, g, e in zip(("x", "weight", "bias", "initial_state"), got, expected):
        _close(g, e, f"second derivative {name}")
