"""fusednn.models' convolutional models (ResNet, InceptionNet): torchvision's parameter names
and shapes, the fused layers against torch's layers and against the reference backend,
eval mode against folding, training on the synthetic images, and argument errors.

float64 runs the ops' references (the kernels serve float16/bfloat16/float32), so the
float64 tests check the models' logic: which convolution meets which batch norm, residual
and activation, the batch norms' folding in eval mode, the running statistics. The Triton
kernels run in float32, through the interpreter on CPU (a few tenths of a second per
convolution of even a tiny input): blocks of each kind and the smallest models there, every
model on CUDA."""

import copy
import dataclasses

import pytest
import torch

import fusednn
from fusednn import testing
from fusednn.models import (InceptionNet, InceptionNetConfig, ResNet, ResNetConfig, resnet18, resnet34, resnet50,
                            tasks)
from fusednn.models.resnet import BasicBlock, Bottleneck
from fusednn.registry import Sample, View

# --------------------------------------------------------------------------- torchvision's names and shapes
#
# torchvision's ResNet-18 and ResNet-50 (1000 classes), one line per block, written from
# torchvision's definition (an indented line continues the block above): "conv o i kh kw"
# is a convolution's weight; "bn c" a batch norm's weight, bias, running_mean, running_var
# [c] and num_batches_tracked []; "fc o i" the classifier's weight and bias.

RESNET18 = """
: conv1 64 3 7 7; bn1 64
layer1.0: conv1 64 64 3 3; bn1 64; conv2 64 64 3 3; bn2 64
layer1.1: conv1 64 64 3 3; bn1 64; conv2 64 64 3 3; bn2 64
layer2.0: conv1 128 64 3 3; bn1 128; conv2 128 128 3 3; bn2 128; downsample.0 128 64 1 1; downsample.1 128
layer2.1: conv1 128 128 3 3; bn1 128; conv2 128 128 3 3; bn2 128
layer3.0: conv1 256 128 3 3; bn1 256; conv2 256 256 3 3; bn2 256; downsample.0 256 128 1 1; downsample.1 256
layer3.1: conv1 256 256 3 3; bn1 256; conv2 256 256 3 3; bn2 256
layer4.0: conv1 512 256 3 3; bn1 512; conv2 512 512 3 3; bn2 512; downsample.0 512 256 1 1; downsample.1 512
layer4.1: conv1 512 512 3 3; bn1 512; conv2 512 512 3 3; bn2 512
: fc 1000 512
"""

RESNET50 = """
: conv1 64 3 7 7; bn1 64
layer1.0: conv1 64 64 1 1; bn1 64; conv2 64 64 3 3; bn2 64; conv3 256 64 1 1; bn3 256
    downsample.0 256 64 1 1; downsample.1 256
layer1.1: conv1 64 256 1 1; bn1 64; conv2 64 64 3 3; bn2 64; conv3 256 64 1 1; bn3 256
layer1.2: conv1 64 256 1 1; bn1 64; conv2 64 64 3 3; bn2 64; conv3 256 64 1 1; bn3 256
layer2.0: conv1 128 256 1 1; bn1 128; conv2 128 128 3 3; bn2 128; conv3 512 128 1 1; bn3 512
    downsample.0 512 256 1 1; downsample.1 512
layer2.1: conv1 128 512 1 1; bn1 128; conv2 128 128 3 3; bn2 128; conv3 512 128 1 1; bn3 512
layer2.2: conv1 128 512 1 1; bn1 128; conv2 128 128 3 3; bn2 128; conv3 512 128 1 1; bn3 512
layer2.3: conv1 128 512 1 1; bn1 128; conv2 128 128 3 3; bn2 128; conv3 512 128 1 1; bn3 512
layer3.0: conv1 256 512 1 1; bn1 256; conv2 256 256 3 3; bn2 256; conv3 1024 256 1 1; bn3 1024
    downsample.0 1024 512 1 1; downsample.1 1024
layer3.1: conv1 256 1024 1 1; bn1 256; conv2 256 256 3 3; bn2 256; conv3 1024 256 1 1; bn3 1024
layer3.2: conv1 256 1024 1 1; bn1 256; conv2 256 256 3 3; bn2 256; conv3 1024 256 1 1; bn3 1024
layer3.3: conv1 256 1024 1 1; bn1 256; conv2 256 256 3 3; bn2 256; conv3 1024 256 1 1; bn3 1024
layer3.4: conv1 256 1024 1 1; bn1 256; conv2 256 256 3 3; bn2 256; conv3 1024 256 1 1; bn3 1024
layer3.5: conv1 256 1024 1 1; bn1 256; conv2 256 256 3 3; bn2 256; conv3 1024 256 1 1; bn3 1024
layer4.0: conv1 512 1024 1 1; bn1 512; conv2 512 512 3 3; bn2 512; conv3 2048 512 1 1; bn3 2048
    downsample.0 2048 1024 1 1; downsample.1 2048
layer4.1: conv1 512 2048 1 1; bn1 512; conv2 512 512 3 3; bn2 512; conv3 2048 512 1 1; bn3 2048
layer4.2: conv1 512 2048 1 1; bn1 512; conv2 512 512 3 3; bn2 512; conv3 2048 512 1 1; bn3 2048
: fc 1000 2048
"""


def _state_dict_entries(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) in state_dict order from a block-per-line spec above."""
    entries, prefix = [], ""
    for line in spec.strip().splitlines():
        if line.startswith(" "):  # the block of the line before, continued
            modules = line
        else:
            prefix, modules = line.split(":")
        for module in modules.split(";"):
            name, *dims = module.split()
            key = f"{prefix}.{name}" if prefix else name
            shape = tuple(int(d) for d in dims)
            if len(shape) == 4:
                entries.append((f"{key}.weight", shape))
            elif len(shape) == 2:
                entries += [(f"{key}.weight", shape), (f"{key}.bias", shape[:1])]
            else:
                entries += [(f"{key}.{n}", shape) for n in ("weight", "bias", "running_mean", "running_var")]
                entries.append((f"{key}.num_batches_tracked", ()))
    return entries


@pytest.mark.parametrize("layers", ["fusednn", "torch"])
def test_resnet_state_dicts_are_torchvisions(layers):
    expected18, expected50 = _state_dict_entries(RESNET18), _state_dict_entries(RESNET50)
    assert len(expected18) == 122 and len(expected50) == 320
    assert sum(not key.endswith("num_batches_tracked") for key, _ in expected18) == 102
    for build, expected in ((resnet18, expected18), (resnet50, expected50)):
        model = build(layers=layers, device="meta")
        assert [(key, tuple(t.shape)) for key, t in model.state_dict().items()] == expected
    resnet34_state = resnet34(layers=layers, device="meta").state_dict()
    assert len([key for key in resnet34_state if key.endswith("conv2.weight")]) == 3 + 4 + 6 + 3


def _randomize(model):
    """Weights and batch-norm statistics away from their initialisation. The batch norms'
    scales stay in [0.5, 1.5] and their shifts small: a ReLU after a batch norm whose shift
    dwarfs its scale passes a whole channel, and a batch norm in training further on then
    cancels that channel's shift, which leaves gradients that are 0 in exact arithmetic
    (rounding noise that no relative bound can judge)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5), module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.3), module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                for t in module.parameters(recurse=False):
                    t.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("layers", ["fusednn", "torch"])
def test_torchvision_weights_load_and_compute_the_same(name, layers):
    torchvision = pytest.importorskip("torchvision")
    theirs = _randomize(getattr(torchvision.models, name)().double()).eval()
    ours = {"resnet18": resnet18, "resnet50": resnet50}[name](layers=layers, dtype=torch.float64).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    testing.assert_close(ours(x), theirs(x))


# --------------------------------------------------------------------------- the fused layers

# Tiny models: about a tenth of a second per float64 forward and backward on a CPU.
MODELS = {
    "resnet18": lambda layers, **kw: resnet18(5, layers, width=4, **kw),
    "resnet50-small-stem": lambda layers, **kw: resnet50(5, layers, width=2, stem="small", **kw),
    "inception": lambda layers, **kw: InceptionNet(InceptionNetConfig(num_classes=5, width=4, blocks=(1, 2),
                                                                      dropout=0.0, layers=layers), **kw),
}


def _batch(dtype=torch.float64, size=16):
    return torch.randn(3, 3, size, size, dtype=dtype), torch.randint(0, 5, (3,))


def _loss_and_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model.loss(*batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


# In training, some parameter gradients are 0 in exact arithmetic: an InceptionNet's
# branches end in a batch norm whose shift passes a ReLU and a max pool (which keep a
# channel's shift wherever the ReLU passes, nearly everywhere before a max) into 1x1
# convolutions, each followed by a batch norm in training, which cancels a channel's
# shift. Such a gradient is rounding noise of order 1e-17, which no relative bound can
# judge; gradients that matter are of order 1e-3 to 1.
ZERO_GRADIENT_ATOL = 1e-13


def _assert_same(ours, truth, rtol=None, atol=ZERO_GRADIENT_ATOL):
    (loss, grads), (loss_truth, grads_truth) = ours, truth
    testing.assert_close(loss, loss_truth, name="loss", rtol=rtol)
    assert grads.keys() == grads_truth.keys()
    for name in grads:
        assert grads[name] is not None, name
        testing.assert_close(grads[name], grads_truth[name], name=f"grad of {name}", rtol=rtol, atol=atol)


def _assert_same_state(ours, theirs):
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        if a.is_floating_point():
            testing.assert_close(a, b, name=name)
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("name", MODELS)
def test_fusednn_layers_match_torch_layers(name):
    """The same weights in the model built from torch's layers give the same loss, gradients
    and running statistics in training, and the same loss and gradients in eval mode
    (where the fused model folds each batch norm into its convolution's epilogue)."""
    ours = _randomize(MODELS[name]("fusednn", dtype=torch.float64))
    theirs = MODELS[name]("torch", dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    batch = _batch()
    for training in (True, False):
        ours.train(training), theirs.train(training)
        with testing.recording_fusednn_calls() as calls:
            truth = _loss_and_gradients(theirs, batch)
        assert not calls, "the torch-layer model ran fused kernels"
        _assert_same(_loss_and_gradients(ours, batch), truth)
        _assert_same_state(ours, theirs)


def test_layers_are_the_asked_modules():
    ours, theirs = resnet18(layers="fusednn", device="meta"), resnet18(layers="torch", device="meta")
    for name in ("conv1", "bn1", "maxpool", "avgpool", "layer2.0.conv1", "layer2.0.bn2", "layer2.0.downsample.0",
                 "layer2.0.downsample.1"):
        fused, plain = ours.get_submodule(name), theirs.get_submodule(name)
        assert type(plain).__module__.startswith("torch.nn")
        assert type(fused) is getattr(fusednn.nn, type(plain).__name__), name
    inception = InceptionNet(InceptionNetConfig(layers="torch"), device="meta")
    assert {type(m) for m in inception.modules() if "Conv" in type(m).__name__} == {torch.nn.Conv2d,
                                                                                   fusednn.nn.ConvBNAct}
    assert type(InceptionNet(device="meta").stem[0].conv) is fusednn.nn.Conv2d


def _block_pair(kind):
    """A BasicBlock / Bottleneck with a downsample, fused and from torch's layers, the same weights."""
    from fusednn.models.resnet import _layer_classes

    cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[kind]
    ours = _randomize(cls(8, 4, 2, _layer_classes("fusednn"), {"dtype": torch.float64}))
    theirs = cls(8, 4, 2, _layer_classes("torch"), {"dtype": torch.float64})
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_block_kernels(kind, training):
    """float32 on the Triton path: a block with its downsample against torch's layers in
    float64, output and every gradient."""
    ours, theirs = _block_pair(kind)
    ours.train(training), theirs.train(training)
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64, requires_grad=True)
    sample = Sample("x", (View(x, lambda t: t.contiguous(memory_format=torch.channels_last)),))
    with testing.recording_fusednn_calls() as calls:
        testing.compare_modules(ours, theirs, sample, "cpu", torch.float32)
    assert calls


# The whole models on the Triton path: on CPU (the interpreter, about 5 s per model) a
# ResNet-18 and an InceptionNet of the smallest widths in training; on CUDA every model of
# MODELS in training and in eval mode.
KERNEL_MODELS = {
    "resnet18": lambda **kw: resnet18(5, "fusednn", width=2, stem="small", **kw),
    "inception": lambda **kw: InceptionNet(InceptionNetConfig(num_classes=5, width=4, blocks=(1, 1), dropout=0.0),
                                           **kw),
}


def _kernel_params():
    params = [pytest.param(name, "cpu", True, id=f"{name}-cpu-train") for name in KERNEL_MODELS]
    if torch.cuda.is_available():
        params += [pytest.param(name, "cuda", training, id=f"{name}-cuda-{'train' if training else 'eval'}")
                   for name in MODELS for training in (True, False)]
    return params


@pytest.mark.parametrize("name, device, training", _kernel_params())
def test_fused_kernels_match_the_reference_backend(name, device, training):
    """float32 on the fused kernels against the reference backend in float64: loss and
    every parameter's gradient."""
    build = KERNEL_MODELS[name] if device == "cpu" else (lambda **kw: MODELS[name]("fusednn", **kw))
    model = _randomize(build()).train(training)
    truth_model = copy.deepcopy(model).double()
    model.to(device)
    images, labels = _batch(torch.float32, size=12)
    with testing.recording_fusednn_calls() as calls:
        ours = _loss_and_gradients(model, (images.to(device), labels.to(device)))
    assert calls, "no fused kernel ran"
    with fusednn.use_backend("reference"):
        truth = _loss_and_gradients(truth_model, (images.double(), labels))
    # float32 through some twenty layers with the statistics of small batches: the
    # gradients reach a relative error of 2e-5 (of their largest element) on CPU; those 0 in
    # exact arithmetic (ZERO_GRADIENT_ATOL) are float32 rounding noise of order 1e-7.
    _assert_same(ours, truth, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- eval mode and folding


def _sgd_steps(model, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(steps):
        images, labels = tasks.oriented_bars(4, 16, 5, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        model.loss(images, labels).backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["resnet18", "inception"])
def test_eval_after_training_is_the_folded_model(name):
    """Trained a few steps in fused and in torch layers (the same running statistics), the
    fused model's eval mode, torch's eval mode and the folded fused model agree."""
    ours = MODELS[name]("fusednn", dtype=torch.float64)
    theirs = MODELS[name]("torch", dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    _sgd_steps(ours), _sgd_steps(theirs)
    _assert_same_state(ours, theirs)
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        expected = theirs(images)
        testing.assert_close(ours(images), expected)
        folded = fusednn.fold_conv_bn(copy.deepcopy(ours))
        testing.assert_close(folded(images), expected)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert ours.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())


def test_channels_last_and_output_shapes():
    model = resnet18(10, width=4, stem="small", dtype=torch.float64).eval()
    seen = []
    model.layer1.register_forward_hook(lambda module, inputs, output: seen.append(output))
    logits = model(torch.randn(2, 3, 12, 10, dtype=torch.float64))
    assert logits.shape == (2, 10) and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert InceptionNet(InceptionNetConfig(num_classes=7), dtype=torch.float64)(
        torch.randn(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 7)
    assert resnet50(3, dtype=torch.float64, width=2)(torch.randn(1, 3, 40, 40, dtype=torch.float64)).shape == (1, 3)


def test_zero_init_residual_starts_each_block_as_the_identity():
    model = resnet18(width=2, zero_init_residual=True)
    assert all(block.bn2.weight.eq(0).all() for stage in (model.layer1, model.layer4) for block in stage)
    assert model.layer1[0].bn1.weight.eq(1).all() and model.bn1.weight.eq(1).all()
    bottleneck = resnet50(width=2, zero_init_residual=True)
    assert bottleneck.layer2[1].bn3.weight.eq(0).all() and bottleneck.layer2[1].bn2.weight.eq(1).all()
    assert not resnet18(width=2).layer1[0].bn2.weight.eq(0).any()


# --------------------------------------------------------------------------- training


# Tiny models on 16x16 images: (build, learning rate, steps, bound). The held-out loss after
# the steps must be below ``bound`` times the loss before (seeded: the same batches on every
# run; they reach about 0.06 of it); both start near chance, ln 4 = 1.39.
TRAINING = {
    "resnet18": (lambda layers, device: resnet18(4, layers, width=8, stem="small"), 3e-3, 60, 0.3),
    "inception": (lambda layers, device: InceptionNet(InceptionNetConfig(num_classes=4, width=4, blocks=(1, 1),
                                                                         layers=layers)), 1e-2, 40, 0.3),
}


@pytest.mark.parametrize("name", TRAINING)
def test_training_lowers_the_loss(name):
    """On the reference backend: float32 here would run the kernels through the interpreter."""
    build, learning_rate, steps, bound = TRAINING[name]
    task = dataclasses.replace(tasks.TASKS["resnet18"], learning_rate=learning_rate, batch_size=32, build=build,
                               batch=lambda B, generator, device: tasks.oriented_bars(B, 16, generator=generator))
    torch.manual_seed(0)
    model = task.build("fusednn", torch.device("cpu"))
    with fusednn.use_backend("reference"):
        result = tasks.train(model, task, steps=steps, batch_size=32, seed=0, device=torch.device("cpu"))
    assert result.steps == steps and result.timed_steps == steps - 1 and result.units == (steps - 1) * 32
    assert result.saved_bytes > 0 and result.peak_bytes is None
    assert result.loss_after < bound * result.loss_before, result


def test_oriented_bars():
    images, labels = tasks.oriented_bars(400, 24, 4, noise=0.0, generator=torch.Generator().manual_seed(2))
    assert images.shape == (400, 3, 24, 24) and images.dtype == torch.float32 and labels.dtype == torch.long
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert images.min() >= 0 and images.max() <= 1
    # The orientation of each bar from its second moments: within a quarter of the class spacing.
    ink = images.sum(dim=1)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    mass = ink.sum(dim=(1, 2))
    cy, cx = (ink * ys).sum(dim=(1, 2)) / mass, (ink * xs).sum(dim=(1, 2)) / mass
    dy, dx = ys - cy.view(-1, 1, 1), xs - cx.view(-1, 1, 1)
    syy, sxx, sxy = ((ink * d).sum(dim=(1, 2)) for d in (dy * dy, dx * dx, dx * dy))
    angle = 0.5 * torch.atan2(2 * sxy, sxx - syy)  # of the principal axis, in (-pi/2, pi/2]
    expected = labels * torch.pi / 4
    difference = torch.remainder(angle - expected + torch.pi / 2, torch.pi) - torch.pi / 2
    assert difference.abs().max() < torch.pi / 16 + 0.1  # a quarter of the spacing, and pixelization
    again, _ = tasks.oriented_bars(400, 24, 4, noise=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again, images)
    noisy, _ = tasks.oriented_bars(400, 24, 4, generator=torch.Generator().manual_seed(2))
    assert 0.25 < (noisy - images).std() < 0.35


# --------------------------------------------------------------------------- errors


def test_bad_arguments_name_the_argument():
    model, inception = resnet18(4, width=2, device="meta"), InceptionNet(device="meta")
    assert isinstance(model, ResNet)
    images = torch.zeros(2, 3, 8, 8)
    cases = [
        (lambda: model(images[0]), ValueError, "fusednn.models.ResNet: images must be 4-D [N, C, H, W]"),
        (lambda: model(images[:, :2]), ValueError, "images must be [N, C, H, W] with C = 3 (config.in_channels)"),
        (lambda: model(images.long()), TypeError, "images must be a floating-point tensor; got int64"),
        (lambda: model.loss(images, torch.zeros(3, dtype=torch.long)), ValueError,
         "fusednn.models.ResNet.loss: labels must be [N] with N = 2"),
        (lambda: inception(images[:, :1]), ValueError, "fusednn.models.InceptionNet: images must be [N, C, H, W]"),
        (lambda: inception.loss(images, torch.zeros(2)), TypeError, "labels must be int64 or int32; got float32"),
        (lambda: ResNetConfig(block="wide"), ValueError, "block must be one of 'basic', 'bottleneck'"),
        (lambda: ResNetConfig(blocks=(2, 2, 2)), ValueError, "blocks must be four ints >= 1"),
        (lambda: ResNetConfig(stem="cifar"), ValueError, "stem must be one of 'imagenet', 'small'"),
        (lambda: ResNetConfig(layers="jax"), ValueError, "layers must be one of 'fusednn', 'torch'"),
        (lambda: resnet18(width=0), ValueError, "width must be an int >= 1; got 0"),
        (lambda: InceptionNetConfig(width=6), ValueError, "width must be a multiple of 4"),
        (lambda: InceptionNetConfig(blocks=()), ValueError, "blocks must be one or more ints >= 1"),
        (lambda: InceptionNetConfig(dropout=1.0), ValueError, "dropout must be a finite float"),
        (lambda: tasks.oriented_bars(2, 32, 1), ValueError, "num_classes must be an int >= 2; got 1"),
    ]
    for index, (call, kind, message) in enumerate(cases):
        with pytest.raises(kind) as info:
            call()
        assert message in str(info.value), (index, str(info.value))
        assert str(info.value).startswith("fusednn.models."), (index, str(info.value))

