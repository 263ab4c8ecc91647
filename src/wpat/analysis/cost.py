"""Training cost of a run in forward-backward passes per step, counted from its config and log.

The counting rule (docs/leaderboard.md, "Training cost"); passes and forwards as
:mod:`wpat.helpers.passes` counts them. Each objective and weight perturbation registers its own
cost (``OBJECTIVES.register(NAME, cost=...)``), so a method added later is counted without an
edit here. One training step costs::

    A · (R + 1) · C  +  s · L  +  L

- ``C``: one crafting of the adversarial examples, ``attacks · K + a/3``: ``K`` the training
  attack's steps (``attack.steps``, one pass each), ``attacks`` the batches the objective has
  crafted (consistency: its two views), ``a`` its attack's forwards without backward (TRADES:
  the clean forward that gives the KL's target);
- ``L``: the objective's training loss, its passes plus its forwards without backward (AT: 1;
  TRADES: 2, the adversarial and the clean batch, + 1/3 for its third, statistics-only forward
  with ``clean_forwards: 2``; KD: 1 + the two teachers' forwards);
- ``s``: the weight perturbation's ascent steps, each one evaluation of the loss: the number it
  declares (AWP's K2, SAM's one) or, for a search that stops by itself (RWP's, ended when no
  example is below c_min), the steps the run logged per epoch (``perturb_steps``); 0 while the
  perturbation is off;
- ``R``: the re-craftings of the adversarial examples against ``w + v`` (SAM's ``recraft``);
- ``A``: ``perturb.alternations`` while the perturbation is on, else 1.

Plain AT with the same attack costs ``K + 1``; the ratio is the cost "relative to AT". A run's
cost is the mean over its epochs (every epoch has the same number of steps). Not counted: the
per-epoch evaluation (the wall time leaves it out too), forwards whose result is thrown away
(the forward of RWP's search that finds no example below c_min and ends it, the forward at w
before a random perturbation), and the AT scripts' scoring forward (``attack.script_forwards``),
for which AT's own forward of x' stands. A component registered without a ``cost`` makes the
run's cost unknown (None).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from wpat.helpers.errors import WpatError
from wpat.helpers.passes import FORWARD, ObjectiveCost, PerturbationCost

__all__ = ["FORWARD", "ObjectiveCost", "PerturbationCost", "objective_cost", "perturbation_cost",
           "step_passes", "at_passes"]


def _options(setting: Mapping[str, Any], section: str, name: str) -> dict[str, Any]:
    prefix = f"{section}.{name}."
    return {k[len(prefix):]: v for k, v in setting.items() if k.startswith(prefix)}


def _rule(registry: Any, name: str, setting: Mapping[str, Any], section: str) -> tuple[Any, dict[str, Any]] | None:
    """The registered cost rule of component ``name`` and its options (defaults filled in)."""
    try:
        rule = registry.info(name).get("cost")
        options = {**registry.defaults(name), **_options(setting, section, name)}
    except WpatError:  # a component this wpat does not have
        return None
    return None if rule is None else (rule, options)


def objective_cost(name: str, setting: Mapping[str, Any]) -> ObjectiveCost | None:
    """The cost of objective ``name`` with its options in the run's ``setting`` (a wrapper's
    base with the base's own options), or None when it has no rule."""
    from wpat.objectives import OBJECTIVES

    found = _rule(OBJECTIVES, name, setting, "objective")
    if found is None:
        return None
    rule, options = found

    def base(other: str) -> ObjectiveCost:
        cost = objective_cost(other, setting)
        if cost is None:
            raise LookupError(other)
        return cost

    try:
        return rule(options, base)
    except LookupError:  # a base without a rule
        return None


def perturbation_cost(name: str, setting: Mapping[str, Any]) -> PerturbationCost | None:
    """The cost of weight perturbation ``name`` while active (``none``: nothing), or None."""
    from wpat.perturb import PERTURBATIONS

    if name == "none":
        return PerturbationCost(0)
    found = _rule(PERTURBATIONS, name, setting, "perturb")
    return None if found is None else found[0](found[1])


def step_passes(setting: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> float | None:
    """Passes per training step of a run, averaged over its logged epochs (see the module
    docstring); ``setting`` is the run's :func:`wpat.sweep.setting_of`. None if a component's
    cost is unknown or no epoch is logged."""
    cost = objective_cost(str(setting["objective.name"]), setting)
    weights = perturbation_cost(str(setting["perturb.name"]), setting)
    records = list(history)
    if cost is None or weights is None or not records:
        return None
    craft = cost.attack(int(setting["attack.steps"]))
    alternations = int(setting["perturb.alternations"])
    total = 0.0
    for record in records:
        active = bool(record.get("perturb_active")) and setting["perturb.name"] != "none"
        if not active:
            total += craft + cost.loss
            continue
        steps = weights.ascent_steps
        if steps is None:
            steps = float(record.get("perturb_steps", 0.0))
        else:
            steps *= alternations
        total += alternations * (1 + weights.recrafts) * craft + steps * cost.loss + cost.loss
    return total / len(records)


def at_passes(setting: Mapping[str, Any]) -> float:
    """What plain AT with the same training attack costs per step: ``K + 1``."""
    return int(setting["attack.steps"]) + 1.0
