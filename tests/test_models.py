"""wpat.models: shapes, parameter counts, normalization inside, errors, what is perturbable."""

import pytest
import torch
from torch import nn

from wpat.helpers.errors import WpatError
from wpat.models import MODELS, Normalize, build_model
from wpat.models.preact_resnet import PreActBlock

MEAN = {1: [0.2860], 3: [0.4914, 0.4822, 0.4465]}
STD = {1: [0.3530], 3: [0.2471, 0.2435, 0.2616]}

# Cheap configurations of every architecture; the big presets are checked separately.
CHEAP = [
    ("preact_resnet18", {}),
    ("wide_resnet", {"depth": 10, "widen": 1}),
    ("vgg19", {}),
    ("small_cnn", {}),
    ("small_cnn", {"width": 8}),
]
CHEAP_IDS = [f"{name}{kw or ''}" for name, kw in CHEAP]


def make(name: str, channels: int = 3, num_classes: int = 10, **kwargs) -> nn.Sequential:
    return build_model(name, num_classes=num_classes, in_channels=channels,
                       mean=MEAN[channels], std=STD[channels], **kwargs)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def wrn34_10() -> nn.Module:
    return make("wrn34_10").eval()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["fmnist", "cifar"])
@pytest.mark.parametrize("name,kwargs", CHEAP, ids=CHEAP_IDS)
def test_output_shape_for_each_dataset_shape(name, kwargs, shape):
    model = make(name, channels=shape[0], num_classes=7, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_wrn34_10_forward(wrn34_10):
    with torch.no_grad():
        assert wrn34_10(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "name,expected",
    [("preact_resnet18", 11.2e6), ("wrn28_10", 36.5e6), ("vgg19", 20.0e6)],
)
def test_preset_parameter_counts(name, expected):
    assert num_params(make(name)) == pytest.approx(expected, rel=0.01)


def test_wrn34_10_parameter_count(wrn34_10):
    assert num_params(wrn34_10) == pytest.approx(46.2e6, rel=0.01)


def test_wide_resnet_kwargs_match_presets():
    assert num_params(make("wide_resnet", depth=28, widen=10)) == num_params(make("wrn28_10"))


@pytest.mark.parametrize("depth,widen,blocks", [(10, 1, 3), (16, 4, 6), (22, 2, 9)])
def test_wide_resnet_depth_and_width(depth, widen, blocks):
    net = make("wide_resnet", depth=depth, widen=widen).net
    assert sum(isinstance(m, PreActBlock) for m in net.modules()) == blocks
    assert net.head[-1].in_features == 64 * widen


@pytest.mark.parametrize("channels", [1, 3])
def test_small_cnn_is_small_but_not_tiny(channels):
    assert 100_000 <= num_params(make("small_cnn", channels)) <= 300_000
    smaller = make("small_cnn", channels, width=16)
    assert num_params(smaller) < num_params(make("small_cnn", channels))


@pytest.mark.parametrize("name,kwargs", CHEAP, ids=CHEAP_IDS)
def test_normalization_is_inside(name, kwargs):
    model = make(name, **kwargs).eval()
    assert isinstance(model[0], Normalize)
    assert model.normalize.mean.shape == model.normalize.std.shape == (1, 3, 1, 1)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(MEAN[3]).view(1, 3, 1, 1)
    std = torch.tensor(STD[3]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std), rtol=0, atol=0)


def test_normalization_is_saved_and_moves_but_is_never_trained():
    model = make("small_cnn", 1)
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    assert not any(n.startswith("normalize") for n, _ in model.named_parameters())
    assert model.to(torch.float64).normalize.std.dtype == torch.float64


def test_input_gradient_flows_through_normalization():
    model = make("small_cnn", 1).eval()
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name,kwargs", CHEAP, ids=CHEAP_IDS)
def test_only_conv_and_linear_weights_are_multidimensional(name, kwargs):
    # Weight perturbations perturb exactly the parameters with more than one dimension.
    model = make(name, **kwargs)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    weights = {f"{mn}.weight" for mn, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    multidim = {n for n, p in model.named_parameters() if p.dim() > 1}
    assert multidim == weights
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.weight.dim() == 1 and m.bias.dim() == 1


@pytest.mark.parametrize("name,kwargs", CHEAP, ids=CHEAP_IDS)
def test_channels_last_gives_the_same_outputs_and_gradients(name, kwargs):
    # float64: train-mode BN over a batch of 4 amplifies float32 rounding of the two conv
    # algorithms far beyond any useful tolerance.
    model = make(name, **kwargs).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl = model_cl(x.to(memory_format=torch.channels_last))
    grads_cl = torch.autograd.grad(out_cl.square().sum(), list(model_cl.parameters()))
    torch.testing.assert_close(out_cl, out, rtol=1e-9, atol=1e-9)
    for g_cl, g in zip(grads_cl, grads):
        torch.testing.assert_close(g_cl, g, rtol=1e-7, atol=1e-9)


def test_unknown_name_lists_the_choices():
    with pytest.raises(WpatError) as e:
        make("resnet50")
    assert "resnet50" in str(e.value)
    for name in ["preact_resnet18", "wide_resnet", "wrn34_10", "wrn28_10", "vgg19", "small_cnn"]:
        assert name in str(e.value)
        assert name in MODELS


@pytest.mark.parametrize("depth", [30, 33, 4, -2])
def test_wide_resnet_bad_depth(depth):
    with pytest.raises(WpatError, match=f"depth={depth}"):
        make("wide_resnet", depth=depth, widen=1)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("wide_resnet", {"widen": 0}, "widen=0"),
        ("small_cnn", {"width": 0}, "width=0"),
        ("mlp", {"hidden": 0}, "hidden=0"),
        ("mlp", {"width": 8}, "model 'mlp' has no option 'width'"),
        ("preact_resnet18", {"depth": 34}, "model 'preact_resnet18' has no option 'depth'"),
        ("small_cnn", {"num_classes": 0}, "num_classes=0"),
    ],
)
def test_bad_model_arguments(name, kwargs, match):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(WpatError, match=match):
        build_model(name, mean=MEAN[3], std=STD[3], **kwargs)


@pytest.mark.parametrize("name, options", [
    ("small_cnn", "num_classes, in_channels, width"),
    ("wide_resnet", "num_classes, in_channels, depth, widen"),
    ("wrn34_10", "num_classes, in_channels"),
])
def test_unknown_option_is_one_line_naming_the_valid_ones(name, options):
    with pytest.raises(WpatError) as e:
        make(name, foo=1)
    assert str(e.value) == f"model {name!r} has no option 'foo'; its options: {options}"


def test_models_register_through_the_registry():
    assert set(MODELS.names()) == {"preact_resnet18", "wide_resnet", "wrn34_10", "wrn28_10",
                                   "vgg19", "small_cnn", "mlp"}
    net = MODELS.build("small_cnn", 10, 1, width=4)
    assert net.features[0].out_channels == 4


def test_every_model_documents_itself():
    from wpat.models.preact_resnet import PreActResNet
    from wpat.models.small_cnn import SmallCNN
    from wpat.models.vgg import VGG

    for name in MODELS.names():
        factory = MODELS.get(name)
        assert (factory.__doc__ or "").strip(), f"model {name!r} has no docstring of its own"
    for cls in (PreActResNet, SmallCNN, VGG, Normalize):
        assert (cls.__dict__.get("__doc__") or "").strip(), cls.__name__
    assert "Zagoruyko" in MODELS.get("wide_resnet").__doc__
    assert "depth" in MODELS.get("wide_resnet").__doc__
    assert "width" in MODELS.get("small_cnn").__doc__


def test_normalize_defaults_to_the_number_of_values():
    norm = Normalize([0.5, 0.4], [0.25, 0.2])
    x = torch.ones(1, 2, 3, 3)
    torch.testing.assert_close(norm(x)[0, :, 0, 0], torch.tensor([2.0, 3.0]))


@pytest.mark.parametrize(
    "mean,std,match",
    [([0.5], [0.5, 0.5, 0.5], "in_channels=3"), ([0.5] * 3, [0.5, 0.0, 0.5], "std")],
)
def test_bad_normalization(mean, std, match):
    with pytest.raises(WpatError, match=match):
        build_model("small_cnn", num_classes=10, mean=mean, std=std)


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [("small_cnn", {}), ("preact_resnet18", {})])
def test_torch_compile_without_graph_breaks(name, kwargs):
    model = make(name, **kwargs).eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.rand(4, 3, 32, 32).to(memory_format=torch.channels_last).requires_grad_(True)
    out, out_c = model(x), compiled(x)
    torch.testing.assert_close(out_c, out, rtol=1e-4, atol=1e-4)
    # Attacks take input gradients through the compiled forward.
    (grad,) = torch.autograd.grad(out.sum(), x)
    (grad_c,) = torch.autograd.grad(out_c.sum(), x)
    torch.testing.assert_close(grad_c, grad, rtol=1e-3, atol=1e-5)


def test_mlp_layout_and_input_check():
    from wpat.configuration.config import load_config
    from wpat.training.experiment import model_from_config

    model = make("mlp", 1)
    assert num_params(model) == 269_834  # 784·256 + 256·256 + 256·10 + 10, BN 2·2·256
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert make("mlp", 3, input_size=32, hidden=32, depth=3)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(WpatError, match="model.mlp.input_size"):
        model(torch.rand(2, 1, 32, 32))
    cfg = load_config("fmnist-smallcnn-linf", ["model.name=mlp", "model.mlp.hidden=64"])
    net = model_from_config(cfg).net
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [64, 64, 10]
