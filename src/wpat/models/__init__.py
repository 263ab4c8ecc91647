"""Image classifiers built by name with :func:`build_model`; inputs in [0, 1], normalized inside.

Architectures, each registered in ``MODELS`` by its own file (see each factory's docstring for
the paper, the exact layout and the options): ``preact_resnet18``, ``wide_resnet`` (``depth``,
``widen``), ``wrn34_10``, ``wrn28_10``, ``vgg19``, ``small_cnn`` (``width``), ``mlp`` (``hidden``,
``depth``, ``input_size``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import nn

from wpat.helpers.errors import WpatError

from wpat.models.normalize import Normalize
from wpat.models.registry import MODELS
from wpat.helpers.registry import import_package

import_package(__name__, __path__)  # each architecture file registers itself in MODELS

__all__ = ["MODELS", "Normalize", "build_model", "normalized"]


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> nn.Sequential:
    """Build architecture ``name`` for ``num_classes`` classes behind a ``Normalize(mean, std)``.

    Returns ``nn.Sequential(normalize=Normalize(mean, std), net=<architecture>)``: ``model[0]``
    (or ``model.normalize``) standardises the input, ``model.net`` is the bare network. Attacks,
    AutoAttack and RobustBench can therefore use the model as is, in pixel space.

    ``mean``/``std`` are per-channel, in the [0, 1] pixel scale, ``in_channels`` values each;
    ``options`` go to the architecture through ``MODELS.build`` (e.g. ``depth``/``widen`` for
    ``wide_resnet``): an option it does not declare is a one-line WpatError naming the model
    and its options.
    """
    MODELS.get(name)  # an unknown name fails first, listing the choices
    if num_classes < 1 or in_channels < 1:
        raise WpatError(f"model {name!r}: num_classes={num_classes} and "
                        f"in_channels={in_channels} must both be >= 1")
    normalize = Normalize(mean, std, in_channels)
    return normalized(MODELS.build(name, num_classes, in_channels, **options), normalize)


def normalized(net: nn.Module, normalize: Normalize) -> nn.Sequential:
    """``nn.Sequential(normalize=normalize, net=net)``, the layout of every wpat model."""
    return nn.Sequential(OrderedDict(normalize=normalize, net=net))
