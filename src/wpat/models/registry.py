"""The ``MODELS`` registry, apart from :mod:`wpat.models` so architecture files can import it."""

from wpat.helpers.registry import Registry

# Each factory: (num_classes, in_channels=3, **architecture options) -> the bare network.
MODELS = Registry("model")
