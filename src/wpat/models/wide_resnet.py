"""Wide ResNets (Zagoruyko & Komodakis, *Wide Residual Networks*, BMVC 2016), in the variant of
the TRADES and AWP reference code that both papers use for their CIFAR-10 tables.

WRN-``depth``-``widen``: a 3x3 stem conv with 16 channels, then three stages of
``n = (depth - 4) / 6`` pre-activation blocks (:class:`~wpat.models.preact_resnet.PreActBlock`)
with widths ``16·widen, 32·widen, 64·widen`` and strides 1, 2, 2, then BN-ReLU, global average
pooling, linear. Dropout 0, as AWP/RWP train it. Convs are initialised as in the reference code,
``N(0, 2 / (3·3·out_channels))`` (kaiming normal, fan-out); BN weights 1, all biases 0.

``wide_resnet(num_classes, in_channels=3, *, depth=34, widen=10)``: ``depth`` (layers, must
satisfy ``(depth - 4) % 6 == 0``), ``widen`` (width multiplier k ≥ 1).
Presets: ``wrn34_10`` (46,160,474 parameters for 10 classes, AT/TRADES/MART) and ``wrn28_10``
(36,479,194, pre-training and RST).
"""

from __future__ import annotations

from torch import nn

from wpat.errors import WpatError
from wpat.models.preact_resnet import PreActResNet


def wide_resnet(
    num_classes: int, in_channels: int = 3, *, depth: int = 34, widen: int = 10
) -> PreActResNet:
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


def wrn34_10(num_classes: int, in_channels: int = 3) -> PreActResNet:
    return wide_resnet(num_classes, in_channels, depth=34, widen=10)


def wrn28_10(num_classes: int, in_channels: int = 3) -> PreActResNet:
    return wide_resnet(num_classes, in_channels, depth=28, widen=10)
