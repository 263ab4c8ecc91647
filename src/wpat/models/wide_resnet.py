"""Wide ResNets: ``wide_resnet`` and the presets ``wrn34_10``, ``wrn28_10``."""

from __future__ import annotations

from torch import nn

from wpat.helpers.errors import WpatError
from wpat.models.preact_resnet import PreActResNet
from wpat.models.registry import MODELS


@MODELS.register("wide_resnet")
def wide_resnet(
    num_classes: int, in_channels: int = 3, *, depth: int = 34, widen: int = 10
) -> PreActResNet:
    """WRN-``depth``-``widen`` (Zagoruyko & Komodakis, *Wide Residual Networks*, BMVC 2016), in
    the variant of the TRADES and AWP reference code that both papers use for CIFAR-10.

    A 3x3 stem conv with 16 channels, then three stages of ``n = (depth - 4) / 6``
    pre-activation blocks (:class:`~wpat.models.preact_resnet.PreActBlock`) with widths
    ``16·widen, 32·widen, 64·widen`` and strides 1, 2, 2, then BN-ReLU, global average pooling,
    linear (a :class:`~wpat.models.preact_resnet.PreActResNet`). Dropout 0, as AWP/RWP train it.
    Convs are initialised as in the reference code, ``N(0, 2 / (3·3·out_channels))`` (kaiming
    normal, fan-out); BN weights 1, all biases 0.

    Args:
        num_classes: number of classes.
        in_channels: input channels (default 3).
        depth: layers, with ``(depth - 4) % 6 == 0`` and ``depth >= 10`` (default 34).
        widen: width multiplier k, an integer >= 1 (default 10).
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise WpatError(f"wide_resnet: depth={depth} is invalid; expected (depth - 4) % 6 == 0 "
                        "and depth >= 10 (e.g. 16, 28, 34)")
    if widen < 1:
        raise WpatError(f"wide_resnet: widen={widen} is invalid; expected an integer >= 1")
    n = (depth - 4) // 6
    stages = [(16 * widen, n, 1), (32 * widen, n, 2), (64 * widen, n, 2)]
    model = PreActResNet(stages, stem_width=16, num_classes=num_classes, in_channels=in_channels)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


@MODELS.register("wrn34_10")
def wrn34_10(num_classes: int, in_channels: int = 3) -> PreActResNet:
    """WRN-34-10, ``wide_resnet(depth=34, widen=10)``: 46,160,474 parameters for 10 classes;
    the AT/TRADES/MART network of AWP and RWP. Options: ``num_classes``, ``in_channels``."""
    return wide_resnet(num_classes, in_channels, depth=34, widen=10)


@MODELS.register("wrn28_10")
def wrn28_10(num_classes: int, in_channels: int = 3) -> PreActResNet:
    """WRN-28-10, ``wide_resnet(depth=28, widen=10)``: 36,479,194 parameters for 10 classes;
    the pre-training and RST network of AWP. Options: ``num_classes``, ``in_channels``."""
    return wide_resnet(num_classes, in_channels, depth=28, widen=10)
