"""A multi-layer perceptron for CPU-scale studies of robust overfitting: :class:`MLP` and ``mlp``."""

from __future__ import annotations

import torch
from torch import nn

from wpat.helpers.errors import WpatError
from wpat.models.registry import MODELS


class MLP(nn.Module):
    """A fully connected classifier on flattened images, with batch normalization::

        flatten | [linear(→ hidden)-BN-ReLU] x depth | linear(hidden → num_classes)

    Without a convolution's inductive bias it memorizes a small training set quickly, and an
    adversarial training step costs about a sixth of :class:`~wpat.models.small_cnn.SmallCNN`'s
    at width 16 per image, which makes robust overfitting (Rice et al., ICML 2020) observable
    within minutes on a CPU (docs/cpu-reproduction.md). The BatchNorm layers keep the training step's BN-mode choices
    meaningful, as on the papers' networks. Parameters for 28x28x1 inputs and 10 classes:
    269,834 at ``hidden=256, depth=2``. PyTorch's default init.

    Args:
        num_classes: number of classes.
        in_channels: input channels (default 3).
        input_size: height = width of the input images in pixels (default 28, Fashion-MNIST).
        hidden: width of each hidden layer (default 256).
        depth: number of hidden layers (default 2).
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, input_size: int = 28,
                 hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * input_size * input_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise WpatError(f"mlp: built for inputs of shape {self.input_shape}, got {tuple(x.shape[1:])} "
                            f"(set model.mlp.input_size to the images' side)")
        return self.layers(x)


@MODELS.register("mlp")
def mlp(num_classes: int, in_channels: int = 3, *, input_size: int = 28, hidden: int = 256,
        depth: int = 2) -> MLP:
    """An :class:`MLP` with BatchNorm, for CPU-scale robust-overfitting studies.

    Args:
        num_classes: number of classes.
        in_channels: input channels (default 3).
        input_size: the images' side in pixels, >= 1 (default 28; 32 for CIFAR/SVHN).
        hidden: units per hidden layer, >= 1 (default 256).
        depth: hidden layers, >= 1 (default 2).
    """
    for name, value in (("input_size", input_size), ("hidden", hidden), ("depth", depth)):
        if value < 1:
            raise WpatError(f"mlp: {name}={value} is invalid; expected an integer >= 1")
    return MLP(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
               hidden=hidden, depth=depth)
