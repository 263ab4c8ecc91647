"""SAM and its adaptive variant ASAM on the training loss (Foret et al., ICLR 2021; Kwon et al.,
ICML 2021), as the MAIR library (``Harry24k/MAIR``, ``mair/optim/minimizer.py``) offers them as
"minimizers" next to AWP."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from wpat.helpers import distributed
from wpat.attacks import WeightGradients
from wpat.helpers.errors import WpatError, check, check_choice, is_finite
from wpat.helpers.model_state import kept
from wpat.perturb.base import (PERTURBATIONS, LossFn, Perturbation, WeightPerturbation, global_norm,
                               per_example, perturbed_parameters)
from wpat.helpers.passes import PerturbationCost

# Which parameters move: every trainable one that gets a gradient (BatchNorm affine parameters
# and biases included, as every SAM code), or only the conv/linear weights AWP and RWP move.
PARAMETER_SETS = ("all", "weights")


@PERTURBATIONS.register("sam", cost=lambda options: PerturbationCost(1, recrafts=int(options["recraft"])))
class SAM(WeightPerturbation):
    """Sharpness-aware minimization of the adversarial loss (Foret, Kleiner, Mobahi, Neyshabur,
    *Sharpness-Aware Minimization for Efficiently Improving Generalization*, ICLR 2021, §2: the
    ε̂(w) of the L2 ball and the gradient taken at w + ε̂(w)), in the form MAIR's ``SAM``
    minimizer runs it::

        g = ∇_w (1/B) Σ_i ℓ_i(w)                       (train mode, at w, x′ crafted at w)
        v = ρ · g / (‖g‖₂ + 1e-16)                     (‖g‖₂ over every moved parameter at once)
        w ← w − η · SGD(∇_w (1/B) Σ_i ℓ_i(w + v))      (momentum and weight decay applied at w)

    ρ is an **absolute** L2 radius in the weights' own units -- not AWP's or RWP's relative γ
    (‖v‖ = γ‖W‖): ‖v‖₂ = ρ whatever the size of the network. For scale, PreAct ResNet-18 at
    initialisation has ‖all parameters‖ ≈ 74, so ρ = 0.05 is ‖v‖/‖W‖ ≈ 7e-4; the statistic
    ``v_over_w`` logs that ratio.

    What the training step does around it (declared, see ``perturb/base.py``), as MAIR's
    ``SAM.step`` and davda54's SAM optimizer (which SAM-AT uses) do:

    - every trainable parameter that receives a gradient is perturbed, BatchNorm γ/β and
      biases included (``params="all"``); a parameter outside the loss's graph is left out of
      ``v`` and of the norm, as their ``if p.grad is None: continue``;
    - the gradient at ``w + v`` is taken, the weights are put back to ``w`` bitwise, and the
      optimizer steps from ``w`` (``descends_from_w``): weight decay and momentum see ``w``, not
      ``w + v`` as in the AWP/RWP scripts. (MAIR subtracts ``v`` rather than restoring a copy:
      one rounding step apart.)
    - the forward at ``w`` is a train-mode forward of the model itself, so the BatchNorm
      running statistics take two updates per step, at ``w`` and at ``w + v``
      (``search_forward_counts``).

    Args:
        rho: ρ ≥ 0, the absolute L2 radius of ``v`` (weight units; default 0.05, the SAM paper's
            CIFAR-10 value as the ASAM authors' README lists it and SAM-AT's ``--rho`` default;
            MAIR requires it and gives no default).
        params: ``"all"`` (default, every SAM code) or ``"weights"``: only the conv and linear
            weights (trainable, more than one dimension), the set AWP and RWP move.
        recraft: if True, ``x′`` is crafted again against ``w + v`` and the update's forward
            takes that one, as MAIR's trainer does (its cost function, attack included, is
            called at ``w`` and again at ``w + v``: one more attack per step). Default False:
            the ``x′`` crafted at ``w`` serves both forwards, as SAM-AT's code and every
            AWP/RWP script. MAIR's attacks (torchattacks') craft in eval mode:
            ``attack.bn_mode=eval`` with ``recraft=true`` is MAIR's step.

    Statistics: ``v_over_w`` (‖v‖/‖W‖ over the moved parameters), ``sam_grad_norm`` (the norm
    in the denominator, before the 1e-16).

    One perturbation at a time: SAM on top of AWP or RWP (two ``perturb.name``) is not
    expressible, and ``perturb.alternations > 1`` is refused (there is no search to continue).
    """

    descends_from_w = True
    search_forward_counts = True
    norm_eps = 1e-16  # MAIR's and the ASAM authors' denominator term

    def __init__(self, rho: float = 0.05, params: str = "all", recraft: bool = False) -> None:
        owner = type(self).__name__
        check(is_finite(rho) and rho >= 0, f"{owner} rho", rho,
              "a finite number >= 0 (an absolute L2 radius, in weight units)")
        check_choice(f"{owner} params", params, PARAMETER_SETS)
        check(isinstance(recraft, bool), f"{owner} recraft", recraft, "true or false")
        self.rho = float(rho)
        self.params = params
        self.recraft = recraft

    def compute(self, model: nn.Module, loss_fn: LossFn, losses: Tensor | None = None,
                start: Perturbation | None = None,
                attack_gradients: WeightGradients | None = None) -> Perturbation:
        """``v`` from the gradient of the mean loss at the current weights, plus, when given,
        the attack's recorded weight gradients (SAM-AT's ascent)."""
        owner = type(self).__name__
        if start is not None:
            raise WpatError(f"{owner} takes one ascent step and cannot continue from a previous result")
        named = self.moved_parameters(model)
        names, params = zip(*named)
        with kept(model, params, buffers=True, train=True) as state:
            if losses is None:
                state.forwarded = True
                losses = loss_fn(model)
            grads = torch.autograd.grad(per_example(losses).mean(), params, allow_unused=True)
        ascent = {n: g for n, g in zip(names, grads) if g is not None}
        if attack_gradients is not None:
            if not attack_gradients.iterations:
                raise WpatError(f"{owner}: the attack recorded no weight gradients (only PGD records them)")
            ascent = {n: g + attack_gradients.sums[n] if n in attack_gradients.sums else g
                      for n, g in ascent.items()}
        moved = [n for n in names if n in ascent]
        g = [ascent[n] for n in moved]
        distributed.average_(g)  # the gradient of the global batch's mean loss
        w = [p.detach() for n, p in named if n in ascent]
        v, norm = self.ascend(moved, g, w)
        stats = {"v_over_w": global_norm(v) / global_norm(w), "sam_grad_norm": norm.detach().float()}
        return Perturbation(dict(zip(moved, v)), stats)

    def moved_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        if self.params == "weights":
            return perturbed_parameters(model)
        chosen = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not chosen:
            raise WpatError(f"{type(model).__name__} has no trainable parameter to perturb")
        return chosen

    def ascend(self, names: Sequence[str], g: Sequence[Tensor], w: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """``v`` for the gradient ``g`` of the parameters ``names`` at ``w``, and the norm it was
        divided by."""
        norm = global_norm(g)
        scale = self.rho / (norm + self.norm_eps)
        return [g_p * scale for g_p in g], norm


@PERTURBATIONS.register("asam", cost=lambda options: PerturbationCost(1, recrafts=int(options["recraft"])))
class ASAM(SAM):
    """Adaptive SAM (Kwon, Kim, Park, Choi, *ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks*, ICML 2021: its ε̂ for the L2 ball), a
    documented variant of :class:`SAM`: the ball is taken in coordinates scaled by ``T_w = |w| + η``, so
    that rescaling a layer's weights does not change the sharpness it sees::

        T_p = |w_p| + η    for a parameter whose name contains "weight", else 1
        v_p = ρ · T_p² g_p / (‖T g‖₂ + 1e-16)          (so ‖T⁻¹ v‖₂ = ρ)

    Everything else is :class:`SAM`'s (every parameter with a gradient, the step from ``w``, two
    BatchNorm updates per step, ``recraft``). Which parameters get ``T`` is decided by name, as
    the authors' ``asam.py`` and MAIR's copy of it: conv, linear **and BatchNorm γ** weights
    (their names end in ``weight``) are scaled, biases and BatchNorm β are not (T = 1) -- the
    paper's T_w applies to every weight alike. wpat follows the code.

    Args:
        rho: ρ ≥ 0, the radius in the T-scaled coordinates (dimensionless; default 0.5, the ASAM
            authors' CIFAR-10 value and their class default; 1.0 for CIFAR-100).
        eta: η ≥ 0, added to |w| (weight units; default 0.01, the authors' and MAIR's class
            default; the authors' ``example_cifar.py`` passes ``--eta 0.0`` by default).
        params, recraft: as :class:`SAM`.

    Statistics: ``v_over_w``, ``sam_grad_norm`` (‖T g‖₂).
    """

    def __init__(self, rho: float = 0.5, eta: float = 0.01, params: str = "all", recraft: bool = False) -> None:
        check(is_finite(eta) and eta >= 0, "ASAM eta", eta, "a finite number >= 0 (weight units)")
        super().__init__(rho, params, recraft)
        self.eta = float(eta)

    def ascend(self, names: Sequence[str], g: Sequence[Tensor], w: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        t = [w_p.abs() + self.eta if "weight" in name else None for name, w_p in zip(names, w)]
        tg = [g_p if t_p is None else t_p * g_p for t_p, g_p in zip(t, g)]
        norm = global_norm(tg)
        scale = self.rho / (norm + self.norm_eps)
        return [(tg_p if t_p is None else t_p * tg_p) * scale for t_p, tg_p in zip(t, tg)], norm
