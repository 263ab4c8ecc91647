"""Training cost of a run in forward-backward passes per step, counted from its config and log.

The counting rule (docs/leaderboard.md, "Training cost"). A **pass** is one forward and one
backward of the model on the batch; a forward without a backward counts :data:`FORWARD` = 1/3
of a pass (a backward costs about two forwards). One training step costs::

    A · (K + a)  +  s · L  +  L

- ``K``: the training attack's steps (``attack.steps``), one pass each (PGD-K);
- ``a``: the objective's attack's forwards without backward (TRADES: the clean forward that
  gives the KL's target, 1/3);
- ``L``: the objective's training loss, its passes plus its forwards without backward (AT: 1;
  TRADES: 2, the adversarial and the clean batch, + 1/3 for its third, statistics-only forward
  with ``clean_forwards: 2``; MART: 2);
- ``s``: the weight perturbation's ascent steps, each one evaluation of the loss, as the run
  logs them per epoch (``perturb_steps``: AWP's steps; the steps RWP took before no example was
  below c_min, 0 when none was; summed over alternations); 0 while the perturbation is off;
- ``A``: ``perturb.alternations`` while the perturbation is on, else 1.

Plain AT with the same attack costs ``K + 1``; the ratio is the cost "relative to AT". A run's
cost is the mean over its epochs (every epoch has the same number of steps). Not counted: the
per-epoch evaluation (the wall time leaves it out too), forwards whose result is thrown away
(the forward of RWP's search that finds no example below c_min and ends it, the forward at w
before a random perturbation), and the AT scripts' scoring forward (``attack.script_forwards``),
for which AT's own forward of x' stands. An objective added later is counted when its rule is
in :data:`OBJECTIVE_COSTS` or when it is registered with ``cost=ObjectiveCost(...)`` (or a
function of its options returning one); otherwise its cost is unknown (None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from wpat.helpers.errors import WpatError

FORWARD = 1 / 3  # a forward without a backward, in passes


@dataclass(frozen=True)
class ObjectiveCost:
    """What one objective costs per step besides the attack's K passes."""

    passes: float  # forward-backward passes of the training loss
    forwards: float = 0.0  # forwards without backward in the training loss
    attack_forwards: float = 0.0  # forwards without backward of its attack, besides its K steps

    @property
    def loss(self) -> float:
        """``L``: one evaluation of the training loss, in passes."""
        return self.passes + FORWARD * self.forwards


OBJECTIVE_COSTS: dict[str, Callable[[Mapping[str, Any]], ObjectiveCost]] = {
    "at": lambda options: ObjectiveCost(1),
    "trades": lambda options: ObjectiveCost(2, forwards=int(options["clean_forwards"]) - 1, attack_forwards=1),
    "mart": lambda options: ObjectiveCost(2),
}


def objective_cost(name: str, options: Mapping[str, Any]) -> ObjectiveCost | None:
    """The cost rule of objective ``name`` with ``options`` (its defaults filled in), or None
    when no rule is known for it."""
    from wpat.objectives import OBJECTIVES

    try:
        rule: Any = OBJECTIVE_COSTS.get(name) or OBJECTIVES.info(name).get("cost")
        options = {**OBJECTIVES.defaults(name), **options}
    except WpatError:  # an objective this wpat does not have
        return None
    if rule is None:
        return None
    return rule if isinstance(rule, ObjectiveCost) else rule(options)


def step_passes(setting: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> float | None:
    """Passes per training step of a run, averaged over its logged epochs (see the module
    docstring); ``setting`` is the run's :func:`wpat.sweep.setting_of`. None if the objective's
    cost is unknown or no epoch is logged."""
    name = str(setting["objective.name"])
    prefix = f"objective.{name}."
    cost = objective_cost(name, {k[len(prefix):]: v for k, v in setting.items() if k.startswith(prefix)})
    records = list(history)
    if cost is None or not records:
        return None
    k, alternations = int(setting["attack.steps"]), int(setting["perturb.alternations"])
    total = 0.0
    for record in records:
        active = bool(record.get("perturb_active")) and setting["perturb.name"] != "none"
        a = alternations if active else 1
        s = float(record.get("perturb_steps", 0.0)) if active else 0.0
        total += a * (k + FORWARD * cost.attack_forwards) + s * cost.loss + cost.loss
    return total / len(records)


def at_passes(setting: Mapping[str, Any]) -> float:
    """What plain AT with the same training attack costs per step: ``K + 1``."""
    return int(setting["attack.steps"]) + 1.0
