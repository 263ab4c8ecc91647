"""Self-distillation from a robust and a standard teacher (KD of KD+SWA): :class:`KD`."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wpat.attacks.losses import cross_entropy_per_example
from wpat.helpers.errors import check, is_finite
from wpat.objectives.base import OBJECTIVES, Batch, Objective
from wpat.helpers.threat import BNMode
from wpat.helpers.passes import ObjectiveCost


def distillation(logits: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Per-example T² · (−Σ_k softmax(t/T)_k · log softmax(s/T)_k): the code's ``loss_fn_kd``
    before its batch mean (a soft cross-entropy, KL(teacher ‖ student) plus the teacher's
    entropy, which has no gradient)."""
    t = temperature
    target = F.softmax(teacher.float() / t, dim=1)
    return -(target * F.log_softmax(logits.float() / t, dim=1)).sum(dim=1) * t * t


@OBJECTIVES.register("kd", cost=lambda options, base: ObjectiveCost(1, forwards=2))  # + both teachers' forwards
class KD(Objective):
    """Adversarial training distilled from a standard and a robust teacher (KD of KD+SWA).

    Chen, Zhang, Liu, Chang, Wang, *Robust Overfitting May Be Mitigated by Properly Learned
    Smoothening*, ICLR 2021; code ``VITA-Group/Alleviate-Robust-Overfitting`` (``utils.py``
    ``train_epoch_adv_dual_teacher``, ``loss_fn_kd``)::

        ℓ_i = a·CE(f(x'_i), y_i) + b·T²·H(t_std(x'_i)/T, f(x'_i)/T) + c·T²·H(t_rob(x'_i)/T, f(x'_i)/T)
        H(u, v) = −Σ_k softmax(u)_k log softmax(v)_k

    Both teachers (``needs`` "teachers") read the student's adversarial example x', in eval
    mode and without gradients, once per x′ (``prepare``). The batch mean of ℓ is the code's
    ``coef_ce·CE + coef_kd1·loss_fn_kd(out, teacher1) + coef_kd2·loss_fn_kd(out, teacher2)``.
    The "smoothening" recipe is this objective with stochastic weight averaging
    (``run.average=swa run.swa_start=55``, ``wpat.optim.averaging``).

    Args:
        standard_teacher: the standard (naturally trained) teacher: a run directory (its
            best.pt, else last.pt) or a checkpoint file of the model's own architecture
            (the code's ``--t_weight1``, the best-clean-accuracy model of ``main_std.py``);
            required, a preset leaves it to the user.
        robust_teacher: the robust (adversarially trained) teacher, likewise (``--t_weight2``,
            the best-robust-accuracy model of an AT run); required.
        temperature: T > 0 of both distillation terms (default 2.0, ``--temperature``).
        ce_weight: a, weight of the cross-entropy (default 0.3, ``--coef_ce``).
        standard_weight: b, weight of the standard teacher's term (default 0.1, ``--coef_kd1``).
        robust_weight: c, weight of the robust teacher's term (default 0.6, ``--coef_kd2``).

    The code distils in every epoch (``--lwf_start 0 --lwf_end 200``); a window is not offered.
    Training attack as in the code (advertorch ``LinfPGDAttack`` on the mean cross-entropy,
    ``rand_init``, in the student's train mode): PGD on cross-entropy from a uniform start,
    crafted in train mode, without the AT scripts' scoring forward. One forward of x' per call.
    """

    attack_loss = "ce"
    attack_init = "uniform"
    attack_bn_mode = BNMode.TRAIN
    single_adversarial_forward = True
    needs = ("teachers",)

    def __init__(self, standard_teacher: str | None = None, robust_teacher: str | None = None,
                 temperature: float = 2.0, ce_weight: float = 0.3, standard_weight: float = 0.1,
                 robust_weight: float = 0.6) -> None:
        check(is_finite(temperature) and temperature > 0, "KD temperature", temperature, "a finite number > 0")
        for key, value in (("ce_weight", ce_weight), ("standard_weight", standard_weight),
                           ("robust_weight", robust_weight)):
            check(is_finite(value) and value >= 0, f"KD {key}", value, "a finite number >= 0")
        self.standard_teacher, self.robust_teacher = standard_teacher, robust_teacher
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)
        self.standard_weight, self.robust_weight = float(standard_weight), float(robust_weight)

    @property
    def teachers(self) -> dict[str, str | None]:
        """The teachers' options, in the order the assembly supplies them (standard, robust)."""
        return {"standard_teacher": self.standard_teacher, "robust_teacher": self.robust_teacher}

    def prepare(self, batch: Batch) -> Batch:
        standard, robust = batch.supplies.teachers
        with torch.no_grad():
            context = {"standard": standard(batch.x_adv), "robust": robust(batch.x_adv)}
        return replace(batch, context={**batch.context, **context})

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.x_adv)
        t = self.temperature
        return (self.ce_weight * cross_entropy_per_example(logits, batch.y)
                + self.standard_weight * distillation(logits, batch.context["standard"], t)
                + self.robust_weight * distillation(logits, batch.context["robust"], t))
