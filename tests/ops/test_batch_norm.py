"""Batch norm beyond what every op gets from the registry (tests/test_registry.py): the
running statistics after several training steps (functional and the drop-in module,
momentum None among them) and the evaluation outputs that follow, a zero-size batch,
the variance's accuracy far from zero mean, output and gradient layouts, what the
backward saves, double backward, and the reference against torch's own primitives."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.testing import assert_close

OP = registry.get("batch_norm")
PAIRS = testing.kernel_dtypes(OP)  # (device, dtype) where a kernel runs here


def _kernel_pairs():
    if not PAIRS:
        pytest.skip("no batch_norm kernel runs on this machine")
    return PAIRS


def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def test_reference_follows_torch_primitives():
    """The reference (F.batch_norm, + residual, activation) against the formulas from
    torch.var_mean: biased variance to normalise, unbiased into running_var."""
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    residual = torch.randn_like(x)
    weight, bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    running_mean, running_var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    start_mean, start_var = running_mean.clone(), running_var.clone()
    y = fusednn.reference.batch_norm(x, running_mean, running_var, weight, bias, True, 0.3, 1e-3, residual=residual,
                                     activation="gelu")
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)

    def per_channel(t):
        return t.view(1, -1, 1, 1)

    expected = F.gelu((x - per_channel(mean)) / per_channel((var + 1e-3).sqrt()) * per_channel(weight)
                      + per_channel(bias) + residual)
    assert_close(y, expected, name="y")
    count = x.numel() // 4
    assert_close(running_mean, 0.7 * start_mean + 0.3 * mean, name="running_mean")
    assert_close(running_var, 0.7 * start_var + 0.3 * var * count / (count - 1), name="running_var")
    y_eval = fusednn.reference.batch_norm(x, running_mean, running_var, weight, bias, False, eps=1e-3)
    assert_close(y_eval, (x - per_channel(running_mean)) / per_channel((running_var + 1e-3).sqrt())
                 * per_channel(weight) + per_channel(bias), name="eval y")


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_running_statistics_follow_torch_over_training_steps(layout):
    """Three training steps of the op (relu + residual, as a ResNet block calls it) leave the
    running statistics torch's F.batch_norm leaves (computed in float64 from the same
    values); evaluation then gives torch's outputs."""
    for device, dtype in _kernel_pairs():
        ours = [torch.randn(5, device=device) * 0.5, torch.rand(5, device=device) + 0.5]  # float32 buffers
        theirs = [t.double().cpu() for t in ours]
        weight = torch.randn(5, device=device, dtype=dtype)
        bias = torch.randn(5, device=device, dtype=dtype)
        for step in range(3):
            x = (torch.randn(2, 5, 7, 13, device=device) * (step + 1) + step).to(dtype)
            residual = torch.randn_like(x)
            if layout == "channels_last":
                x, residual = _channels_last(x), _channels_last(residual)
            fusednn.ops.batch_norm(x, *ours, weight, bias, True, 0.2, 1e-5, residual=residual, activation="relu")
            F.batch_norm(x.double().cpu(), *theirs, weight.double().cpu(), bias.double().cpu(), True, 0.2, 1e-5)
        # float32 statistics of the same values: float32's tolerance
        assert_close(ours[0], theirs[0], name=f"running_mean {dtype}", precision=torch.float32)
        assert_close(ours[1], theirs[1], name=f"running_var {dtype}", precision=torch.float32)
        x = torch.randn(3, 5, 13, 7, device=device).to(dtype)
        y = fusednn.ops.batch_norm(x, *ours, weight, bias, False)
        expected = F.batch_norm(x.double().cpu(), *theirs, weight.double().cpu(), bias.double().cpu(), False)
        baseline = F.batch_norm(x, *[t.to(dtype) for t in ours], weight, bias, False)  # torch in x's dtype
        assert_close(y, expected, name=f"eval y {dtype}", lowp_baseline=baseline)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_running_statistics_follow_torch(momentum):
    """fusednn.nn.BatchNorm2d against torch.nn.BatchNorm2d over training steps:
    num_batches_tracked, the running statistics (momentum None: the cumulative average),
    then the outputs in evaluation mode."""
    ours = fusednn.nn.BatchNorm2d(6, momentum=momentum)
    theirs = torch.nn.BatchNorm2d(6, momentum=momentum)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    with testing.recording_fusednn_calls() as calls:
        for step in range(3):
            x = _channels_last(torch.randn(2, 6, 7, 7) * (step + 1) - step)
            assert_close(ours(x), theirs(x), name="training output", rtol=1e-5)
    assert calls, "the module ran no fusednn op"
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 3
    assert_close(ours.running_mean, theirs.running_mean, name="running_mean")
    assert_close(ours.running_var, theirs.running_var, name="running_var")
    ours.eval()
    theirs.eval()
    x = torch.randn(3, 6, 13, 7)
    assert_close(ours(x), theirs(x), name="eval output")


def test_zero_size_batch_in_training_leaves_running_statistics_alone():
    """torch's behaviour: an empty output, the buffers unchanged, zero parameter gradients."""
    for device, dtype in _kernel_pairs():
        running_mean, running_var = torch.randn(5, device=device), torch.rand(5, device=device) + 0.5
        start = running_mean.clone(), running_var.clone()
        x = torch.randn(0, 5, 3, 3, device=device, dtype=dtype, requires_grad=True)
        weight = torch.randn(5, device=device, dtype=dtype, requires_grad=True)
        bias = torch.randn(5, device=device, dtype=dtype, requires_grad=True)
        y = fusednn.ops.batch_norm(x, running_mean, running_var, weight, bias, True, activation="relu")
        assert y.shape == x.shape
        assert torch.equal(running_mean, start[0]) and torch.equal(running_var, start[1])
        grads = torch.autograd.grad(y.sum(), [x, weight, bias])
        assert grads[0].shape == x.shape
        assert torch.equal(grads[1], torch.zeros_like(weight)) and torch.equal(grads[2], torch.zeros_like(bias))


def test_variance_far_from_zero_mean():
    """The shifted values and Chan's parallel formula: with |mean| = 1e4 and std 1 the
    float32 variance keeps its accuracy (a float32 sum of squares would lose it all to
    cancellation). Under the interpreter the shape spans several tiles per program and
    several programs, so both folds run."""
    for device, dtype in _kernel_pairs():
        if dtype != torch.float32:
            continue
        x = _channels_last(1e4 + torch.randn(4, 8, 13, 13, device=device))
        running_mean, running_var = torch.zeros(8, device=device), torch.zeros(8, device=device)
        fusednn.ops.batch_norm(x, running_mean, running_var, training=True, momentum=1.0)
        var, mean = torch.var_mean(x.double().cpu(), dim=(0, 2, 3), correction=1)
        # a few float32 roundings: the mean's relative to 1e4, the variance's relative to itself
        few_roundings = 4 * torch.finfo(torch.float32).eps
        assert_close(running_mean, mean, name="mean", rtol=few_roundings)
        assert_close(running_var, var, name="unbiased variance", rtol=few_roundings)


def test_strided_running_statistics_are_updated():
    """Running buffers that are views with a stride (updated through a contiguous copy)."""
    for device, dtype in _kernel_pairs():
        storage = torch.rand(2, 5, device=device) + 0.5
        running_mean, running_var = storage[0, ::1], storage.t()[:, 1]
        expected = [t.double().cpu() for t in (running_mean, running_var)]
        x = torch.randn(3, 5, 4, 4, device=device).to(dtype)
        fusednn.ops.batch_norm(x, running_mean, running_var, training=True, momentum=0.5)
        F.batch_norm(x.double().cpu(), *expected, training=True, momentum=0.5)
        assert_close(running_mean, expected[0], name="running_mean", precision=torch.float32)
        assert_close(running_var, expected[1], name="running_var", precision=torch.float32)


@pytest.mark.parametrize("training", [True, False])
def test_layouts_of_outputs_and_gradients(training):
    """channels_last in, channels_last y, grad input and grad residual out; NCHW in,
    contiguous out; parameter gradients contiguous in the parameters' dtype (float32
    parameters with a float16 input)."""
    for device, dtype in _kernel_pairs():
        for to_layout, memory_format in ((_channels_last, torch.channels_last), (lambda t: t, torch.contiguous_format)):
            x = to_layout(torch.randn(2, 5, 7, 7, device=device).to(dtype)).requires_grad_()
            residual = to_layout(torch.randn(2, 5, 7, 7, device=device).to(dtype)).requires_grad_()
            weight = torch.randn(5, device=device, requires_grad=True)
            bias = torch.randn(5, device=device, requires_grad=True)
            stats = (torch.zeros(5, device=device), torch.ones(5, device=device))
            y = fusednn.ops.batch_norm(x, *stats, weight, bias, training, residual=residual, activation="silu")
            assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
            grads = torch.autograd.grad(y, [x, residual, weight, bias], torch.randn_like(y))
            for grad in grads[:2]:
                assert grad.dtype == dtype and grad.is_contiguous(memory_format=memory_format)
            for grad in grads[2:]:
                assert grad.dtype == torch.float32 and grad.is_contiguous()


@pytest.mark.parametrize("activation, full_size_saved", [(None, 1), ("relu", 2)])
def test_backward_saves_input_and_statistics_not_the_output(activation, full_size_saved):
    """The backward keeps the input (and, with an activation, the residual) and per-channel
    statistics; it recomputes the normalised output instead of saving it."""
    device, dtype = _kernel_pairs()[0]
    x = torch.randn(2, 3, 5, 5, device=device, dtype=dtype, requires_grad=True)
    residual = torch.randn_like(x, requires_grad=True)
    weight = torch.randn(3, device=device, dtype=dtype, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fusednn.ops.batch_norm(x, None, None, weight, None, True, residual=residual, activation=activation)
    assert sum(shape == tuple(x.shape) for shape in saved) == full_size_saved, saved
    assert all(shape in ((3,), tuple(x.shape)) for shape in saved), saved
    torch.autograd.grad(y.sum(), [x, residual, weight])


@pytest.mark.parametrize("training", [True, False])
def test_double_backward_matches_the_reference(training):
    """create_graph=True: second derivatives (gradient penalties) equal the float64
    reference's, in training (through the batch statistics) and evaluation."""
    device, dtype = _kernel_pairs()[0]
    assert dtype == torch.float32
    shape = (2, 3, 4, 4)
    values = [torch.randn(shape, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
              torch.randn(3, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)]
    stats = (torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5)
    grad_y, direction = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)

    def second_derivatives(fn, cast):
        x, w, b, r = (cast(v).requires_grad_() for v in values)
        y = fn(x, *[cast(s).clone() for s in stats], w, b, training, residual=r, activation="silu")
        first = torch.autograd.grad(y, [x, w, b, r], cast(grad_y), create_graph=True)
        penalty = (first[0] * cast(direction)).sum() + first[1].square().sum()
        return torch.autograd.grad(penalty, [x, w, b, r], allow_unused=True)

    ours = second_derivatives(fusednn.ops.batch_norm, lambda t: t.to(device=device, dtype=dtype))
    expected = second_derivatives(fusednn.reference.batch_norm, lambda t: t)
    for name, got, want in zip(("x", "weight", "bias", "residual"), ours, expected):
        got = torch.zeros_like(want) if got is None else got
        want = torch.zeros_like(got) if want is None else want
        assert_close(got, want, name=f"second derivative {name}")
