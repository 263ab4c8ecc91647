"""Random weight perturbation (Wu, Xia, Wang, NeurIPS 2020, §5.3, the baseline AWP is compared to).

Each perturbed tensor (trainable, more than one dimension) gets a Gaussian direction scaled to
the AWP size of its layer:

    v_l = γ · ‖w_l‖ · r_l / ‖r_l‖,    r_l ~ N(0, I)

The loss is not looked at, so ``loss_fn`` is never called.

Arguments:
    gamma: relative size γ ≥ 0 (dimensionless; default 0.01; the paper sweeps 1e-4 … 2).
    seed: if given, directions come from a private ``torch.Generator`` seeded once with it (a
        reproducible stream, one new direction per ``compute``); if None, from the global RNG.

``stats``: ``"v_over_w"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wpat.perturb.base import (PERTURBATIONS, LossFn, WeightPerturbation, check_gamma, global_norm,
                               perturbed_parameters, rescale_per_layer)


@PERTURBATIONS.register("random")
class RandomWP(WeightPerturbation):
    def __init__(self, gamma: float = 0.01, seed: int | None = None) -> None:
        check_gamma("RandomWP", gamma)
        super().__init__()
        self.gamma = float(gamma)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def compute(self, model: nn.Module, loss_fn: LossFn, losses: Tensor | None = None) -> dict[str, Tensor]:
        names, params = zip(*perturbed_parameters(model))
        generator = self._generator_for(params[0].device)
        w = [p.detach() for p in params]
        r = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
             for p in w]
        v = rescale_per_layer(r, w, self.gamma)
        self.stats = {"v_over_w": global_norm(v) / global_norm(w)}
        return dict(zip(names, v))

    def _generator_for(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator
