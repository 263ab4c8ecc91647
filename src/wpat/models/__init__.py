"""Image classifiers built by name; every model takes inputs in [0, 1] and normalizes inside.

``build_model(name, num_classes=..., mean=..., std=...)`` returns
``nn.Sequential(normalize=Normalize(mean, std), net=<architecture>)``: ``model[0]`` (or
``model.normalize``) standardises the input, ``model.net`` is the bare network. Attacks,
AutoAttack and RobustBench can therefore use the model as is, in pixel space.

Architectures (see each file for the paper, the exact layout and the keyword arguments):
``preact_resnet18``, ``wide_resnet`` (``depth``, ``widen``), ``wrn34_10``, ``wrn28_10``,
``vgg19``, ``small_cnn`` (``width``). Adding one is a file plus one line in ``_FACTORIES``.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Sequence

from torch import nn

from wpat.errors import WpatError
from wpat.models.normalize import Normalize
from wpat.models.preact_resnet import preact_resnet18
from wpat.models.small_cnn import small_cnn
from wpat.models.vgg import vgg19
from wpat.models.wide_resnet import wide_resnet, wrn28_10, wrn34_10
from wpat.registry import Registry

__all__ = ["MODELS", "Normalize", "build_model"]

# Each factory: (num_classes, in_channels=3, **architecture kwargs) -> the bare network.
MODELS = Registry("model")
_FACTORIES = {
    "preact_resnet18": preact_resnet18,
    "wide_resnet": wide_resnet,
    "wrn34_10": wrn34_10,
    "wrn28_10": wrn28_10,
    "vgg19": vgg19,
    "small_cnn": small_cnn,
}
for _name, _factory in _FACTORIES.items():
    MODELS.register(_name)(_factory)


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs: Any,
) -> nn.Sequential:
    """Build architecture ``name`` for ``num_classes`` classes behind a ``Normalize(mean, std)``.

    ``mean``/``std`` are per-channel, in the [0, 1] pixel scale, ``in_channels`` values each;
    ``kwargs`` go to the architecture (e.g. ``depth``/``widen`` for ``wide_resnet``).
    """
    factory = MODELS.get(name)
    if num_classes < 1 or in_channels < 1:
        raise WpatError(f"model {name!r}: num_classes={num_classes} and "
                        f"in_channels={in_channels} must both be >= 1")
    try:
        # Checks the config's keyword arguments only, so bugs inside a factory still surface.
        inspect.signature(factory).bind(num_classes, in_channels, **kwargs)
    except TypeError as e:
        raise WpatError(f"model {name!r}: bad arguments {sorted(kwargs)}: {e}") from None
    normalize = Normalize(mean, std, in_channels)
    net = factory(num_classes, in_channels, **kwargs)
    return nn.Sequential(OrderedDict(normalize=normalize, net=net))
