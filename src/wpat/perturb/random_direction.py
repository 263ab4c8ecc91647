"""Random weight perturbation, the baseline AWP is compared with (Wu, Xia, Wang, NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wpat.perturb.base import (PERTURBATIONS, LossFn, Perturbation, WeightPerturbation, check_size,
                               global_norm, perturbed_parameters, rescale_per_layer)
from wpat.helpers.passes import PerturbationCost


@PERTURBATIONS.register("random", cost=lambda options: PerturbationCost(0))  # no search
class RandomWP(WeightPerturbation):
    """A random direction of AWP's size (Wu, Xia, Wang, NeurIPS 2020, §5.3, Fig. 3a).

    Each perturbed tensor (trainable, more than one dimension) gets a Gaussian direction scaled
    to the AWP size of its layer::

        v_l = γ · ‖w_l‖ · r_l / ‖r_l‖,    r_l ~ N(0, I)

    The loss is not looked at, so ``loss_fn`` is never called.

    Args:
        gamma: relative size γ ≥ 0 (dimensionless; default 0.01; the paper sweeps 1e-4 … 2).
        seed: if given, directions come from a private ``torch.Generator`` seeded once with it
            (a reproducible stream, one new direction per ``compute``); if None, from the global
            RNG.

    Statistics: ``v_over_w``.
    """

    def __init__(self, gamma: float = 0.01, seed: int | None = None) -> None:
        check_size("RandomWP", gamma)
        self.gamma = float(gamma)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def compute(self, model: nn.Module, loss_fn: LossFn, losses: Tensor | None = None) -> Perturbation:
        names, params = zip(*perturbed_parameters(model))
        generator = self._generator_for(params[0].device)
        w = [p.detach() for p in params]
        r = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in w]
        v = rescale_per_layer(r, w, self.gamma)
        return Perturbation(dict(zip(names, v)), {"v_over_w": global_norm(v) / global_norm(w)})

    def _generator_for(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator
