"""MLCAT by weight perturbation (Yu et al., ICML 2022): RWP's search with MLCAT's threshold."""

from __future__ import annotations

from wpat.helpers.errors import check, is_number
from wpat.perturb.base import PERTURBATIONS
from wpat.perturb.rwp import RWP
from wpat.helpers.passes import PerturbationCost


@PERTURBATIONS.register("mlcat-wp", cost=lambda options: PerturbationCost(None))  # its steps are logged
class MLCATWeight(RWP):
    """Minimum-loss-constrained adversarial training, weight-perturbation realization (MLCAT_WP).

    Yu, Han, Shen, Yu, Gong, Gong, Liu, *Understanding Robust Overfitting of Adversarial
    Training and Beyond*, ICML 2022 (arXiv 2206.08675); code
    ``ChaojianYu/Understanding-Robust-Overfitting``, ``train_step5_weight_15.py`` with
    ``utils_wp.py``. The weights are perturbed so as to raise the loss of the adversarial
    examples still below the minimum loss c, re-selected at each ascent step::

        v = 0, D = 0
        for k in 1..K:
            I_i = [ℓ_i(w + v) < c]                     (strict, train mode)
            D += ∇ (1/B) Σ_i I_i ℓ_i(w + v)            (mean over the WHOLE batch)
            v = γ · ‖W‖ / (‖D‖ + 1e-20) · D            (global norm over conv/linear weights)

    then the SGD step is taken at ``w + v`` and ``v`` subtracted again. This is the search of
    :class:`~wpat.perturb.RWP` (Yu et al., IJCAI 2022, the same authors' later paper): the
    class only changes its defaults and names. ``utils_wp.py`` is the RWP repository's
    ``AT_AWP_RWP/utils_rwp.py`` with its class and arguments renamed, and the MLCAT script calls
    it with ``threshold=1.5`` where RWP's AT script passes ``LSC_loss=1.7``. Against RWP:

    - threshold: c = 1.5 (MLCAT's code) vs RWP's c_min = 1.7 (CIFAR-10/SVHN) or 4.0 (CIFAR-100);
    - selection: the same, ℓ_i < c, strict, decided afresh at every step at ``w + v``, the
      selected losses summed and divided by the whole batch size B;
    - steps: the same, K = 10 (hard-coded in both codes; an option here);
    - exit: neither code breaks out of its loop (the RWP paper's Algorithm 1 does). Once no
      example is below c the proxy's gradient is zero, so every later step leaves ``v``
      unchanged: wpat stops there by default, with the same ``v``; ``early_exit=False`` runs
      all K steps;
    - size, proxy and BatchNorm: the same (γ relative to the global weight norm, the proxy's
      SGD lr 0.01 cancelling in the rescaling, proxy statistics discarded, one BN update by the
      training forward at ``w + v``), no warm-up (``--wp-warmup 0``).

    Args:
        gamma: relative size γ ≥ 0, ‖v‖ = γ‖W‖ over all conv and linear weights
            (dimensionless; default 0.01, the script's ``--wp-gamma``).
        threshold: the minimum loss c ≥ 0 (nats for cross-entropy; default 1.5, the code's;
            ``inf`` selects every example, 0 none).
        steps: K ≥ 1 ascent steps (default 10, the code's).
        subset, norm, early_exit: as :class:`~wpat.perturb.RWP` (defaults False, ``"l2"``, True).

    Combinations: the authors ran it with AT only; with TRADES or MART (c then compares their
    whole per-example loss) it is allowed and never run by them. It cannot be stacked on AWP or
    RWP (one ``perturb.name``; it is RWP with another threshold).

    Statistics: ``mlcat_frac_below`` (fraction with ℓ < c at step 1, at w), ``perturb_steps``,
    ``v_over_w``.
    """

    selected_stat = "mlcat_frac_below"

    def __init__(self, gamma: float = 0.01, threshold: float = 1.5, steps: int = 10,
                 subset: bool = False, norm: str = "l2", early_exit: bool = True) -> None:
        check(is_number(threshold) and threshold >= 0, "MLCAT-WP threshold", threshold, "a number >= 0 (inf allowed)")
        super().__init__(gamma=gamma, c_min=threshold, steps=steps, subset=subset, norm=norm,
                         early_exit=early_exit)

    @property
    def threshold(self) -> float:
        return self.c_min
