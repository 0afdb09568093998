"""fusednn.fold_conv_bn: which batch norms fold (and which activations with them), and that
the folded model computes what the model computed in eval mode (float64: 1e-10)."""

import pytest
import torch

import fusednn
from fusednn import testing
from fusednn.models import InceptionNet, InceptionNetConfig, resnet18, resnet50
from fusednn.nn import Conv2d

nn = torch.nn


def _randomize(model):
    """Weights and running statistics away from their initialisation (a freshly made batch
    norm in eval mode is almost the identity, which would hide a wrong fold)."""
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.5)
    return model


def _fold_and_compare(model, x):
    """Folds ``model`` (float64, eval mode) and checks the output is unchanged; returns it."""
    model = _randomize(model.double()).eval()
    x = x.double()
    expected = model(x)
    assert fusednn.fold_conv_bn(model) is model and not model.training
    testing.assert_close(model(x), expected)
    return model


def _batch_norms(model):
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def test_conv_bn_relu_becomes_one_fused_convolution():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
    weight = model[0].weight
    _fold_and_compare(model, torch.randn(2, 3, 7, 7))
    conv = model[0]
    assert type(conv) is Conv2d and conv.activation == "relu" and conv.weight is weight  # the same parameter
    assert conv.bias is not None and conv.bias.dtype == torch.float64
    assert type(model[1]) is nn.Identity and type(model[2]) is nn.Identity


def test_nested_sequentials_and_the_activations():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, bias=True), nn.BatchNorm2d(8, momentum=None), nn.GELU(),
        nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=4, padding_mode="reflect"), nn.BatchNorm2d(8),
            nn.GELU(approximate="tanh"),
            nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6, affine=False), nn.SiLU())),
        Conv2d(6, 5, 3), fusednn.nn.BatchNorm2d(5), nn.MaxPool2d(2), nn.ReLU(),  # no activation right after
    )
    _fold_and_compare(model, torch.randn(2, 3, 13, 12))
    assert not _batch_norms(model)
    folded = [model[0], model[3][0], model[3][3][0], model[4]]
    assert [type(m) for m in folded] == [Conv2d] * 4
    assert [m.activation for m in folded] == ["gelu", "gelu_tanh", "silu", None]
    assert type(model[7]) is nn.ReLU and type(model[3][2]) is nn.Identity
    assert model[3][0].padding_mode == "reflect" and model[3][0].groups == 4


class WeightStandardizedConv2d(nn.Conv2d):
    """A convolution subclass computing something else: folding into its weight would be wrong."""

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


class ConvThenBatchNorm(nn.Module):
    """A convolution and a batch norm outside a Sequential, not declared in conv_bn_pairs."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_batch_norms_not_after_a_plain_convolution_are_left_alone():
    model = nn.Sequential(
        nn.BatchNorm2d(3),  # first
        nn.ReLU(), nn.BatchNorm2d(3),  # after an activation
        WeightStandardizedConv2d(3, 4, 3), nn.BatchNorm2d(4),  # after another kind of convolution
        nn.ConvTranspose2d(4, 4, 2), nn.BatchNorm2d(4),
        nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5, track_running_stats=False),  # no running statistics
        nn.Conv2d(5, 4, 1), ConvThenBatchNorm(),
    )
    _fold_and_compare(model, torch.randn(2, 3, 6, 6))
    assert _batch_norms(model) == ["0", "2", "4", "6", "8", "10.bn"]
    assert all(type(m) is not Conv2d for m in model)


def test_a_model_in_training_mode_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"fusednn.fold_conv_bn: model must be in eval mode \(call model.eval\(\) "
                                         r"first\).*; got the model in training mode"):
        fusednn.fold_conv_bn(model)
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match="got its submodule '1' in training mode"):
        fusednn.fold_conv_bn(model)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module; got dict"):
        fusednn.fold_conv_bn({})
    assert type(model[1]) is nn.BatchNorm2d  # nothing changed


def test_a_torch_model():
    """A VGG-style torch.nn model: every conv/bn/relu triple folds into one convolution."""
    def stage(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))

    model = nn.Sequential(stage(3, 4), stage(4, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    _fold_and_compare(model, torch.randn(2, 3, 12, 12))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(type(m) is Conv2d and m.activation == "relu" for m in convs)
    assert not _batch_norms(model)
    scripted = torch.jit.script(model)  # the folded convolutions script as torch's with the activation
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("layers", ["fusednn", "torch"])
@pytest.mark.parametrize("build", ["resnet18", "resnet50", "inception"])
def test_the_library_models(build, layers):
    """The ResNet blocks and stem and the ConvBNAct blocks fold by design (conv_bn_pairs),
    the downsample Sequentials by the Sequential rule; the model keeps its layers."""
    if build == "inception":
        model = InceptionNet(InceptionNetConfig(width=4, blocks=(1, 1), layers=layers))
    else:
        model = {"resnet18": resnet18, "resnet50": resnet50}[build](5, layers, width=2, stem="small")
    _fold_and_compare(model, torch.randn(2, 3, 10, 10))
    assert not _batch_norms(model)
    conv_class = Conv2d if layers == "fusednn" else nn.Conv2d
    assert all(type(m) is conv_class and getattr(m, "activation", None) is None
               for m in model.modules() if isinstance(m, nn.Conv2d))


def test_a_folded_convolution_is_one_kernel():
    """float32 on the Triton path: the folded conv/bn/relu runs one conv2d kernel."""
    model = _randomize(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())).eval()
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        expected = model.double()(x.double())
        fusednn.fold_conv_bn(model.float())
        with testing.recording_fusednn_calls() as calls:
            y = model(x.contiguous(memory_format=torch.channels_last))
    assert [str(c.op) for c in calls] == ["fusednn.conv2d_forward.default"]
    testing.assert_close(y, expected, precision=torch.float32)
