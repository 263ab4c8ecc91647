"""What a component costs per training step, in forward-backward passes of the model.

Each objective and weight perturbation states its own rule when it is registered
(``OBJECTIVES.register("trades", cost=...)``), a function of its options returning one of the
records below; :mod:`wpat.analysis.cost` combines them with the training attack's steps into a
run's passes per step (docs/leaderboard.md, "Training cost"). A **pass** is one forward and one
backward on the batch; a forward without a backward counts :data:`FORWARD` of a pass (a backward
costs about two forwards).
"""

from __future__ import annotations

from dataclasses import dataclass

FORWARD = 1 / 3  # a forward without a backward, in passes


@dataclass(frozen=True)
class ObjectiveCost:
    """What one objective costs per step besides its attack's K steps.

    Attributes:
        passes: forward-backward passes of the training loss (AT 1; TRADES 2).
        forwards: forwards without backward in the training loss (a teacher's, the average's).
        attack_forwards: forwards without backward of its attack besides the K steps (TRADES:
            the clean forward that gives the KL's target).
        attacks: batches the attack crafts per step, K passes each (1; consistency: its 2 views).
    """

    passes: float
    forwards: float = 0.0
    attack_forwards: float = 0.0
    attacks: int = 1

    @property
    def loss(self) -> float:
        """One evaluation of the training loss, in passes."""
        return self.passes + FORWARD * self.forwards

    def attack(self, steps: int) -> float:
        """One crafting of the adversarial examples by a K = ``steps`` attack, in passes."""
        return self.attacks * steps + FORWARD * self.attack_forwards

    def times(self, views: int) -> ObjectiveCost:
        """The same objective on ``views`` batches at once (a wrapper's base on each view)."""
        return ObjectiveCost(self.passes * views, self.forwards * views, self.attack_forwards * views,
                             self.attacks * views)


@dataclass(frozen=True)
class PerturbationCost:
    """What one weight perturbation costs per step while it is active.

    Attributes:
        ascent_steps: evaluations of the training loss its search makes (AWP's K2, SAM's one
            ascent step); None where the search stops by itself (RWP's, ended when no example
            is below c_min), whose steps the run logs per epoch as ``perturb_steps``.
        recrafts: times the adversarial examples are crafted again against ``w + v`` (SAM's
            ``recraft``: 1).
    """

    ascent_steps: float | None
    recrafts: int = 0
