"""The objective contract: an objective declares what it needs (the weight average, teachers, a
second view, an objective to wrap) and the assembly supplies it, with no change to the loop.

Each toy objective is registered here, in the test file alone, and trained through `wpat train`.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, crashing_at_call, fashion_mnist_available
from wpat.training import experiment
from wpat.attacks.losses import ATTACK_LOSSES, cross_entropy_per_example, kl_divergence
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.data import DeviceLoader
from wpat.objectives import OBJECTIVES, TRADES, Batch, Objective, Wrapper
from wpat.perturb import WeightPerturbation
from wpat.perturb.base import Perturbation
from wpat.training.step import train_step
from wpat.helpers.threat import BNMode

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

TINY = ["fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=128", "data.test_subset=32",
        "data.batch_size=32", "eval.n_train=32", "eval.steps=1", "attack.steps=1", "perturb.name=none",
        "schedule.epochs=1", "run.threads=1", "run.progress=false", "run.tensorboard=false", f"run.seed={SEED}"]
FIXTURE_RUN = Path(__file__).parent / "fixtures" / "main-resume" / "last.pt"

seen: list[Batch] = []  # what the toy objectives were handed, in order


@pytest.fixture
def register(monkeypatch):
    """Register toy objectives for one test only (the registry is restored afterwards)."""
    monkeypatch.setattr(OBJECTIVES, "_entries", dict(OBJECTIVES._entries))
    monkeypatch.setattr(OBJECTIVES, "_info", dict(OBJECTIVES._info))
    seen.clear()

    def add(name: str, cls: type) -> type:
        return OBJECTIVES.register(name)(cls)

    return add


class TowardsTheAverage(Objective):
    """AT plus a KL towards the weight average's prediction on x' (ReBAT's shape)."""

    attack_loss, attack_init, attack_bn_mode = "ce", "uniform", BNMode.TRAIN
    needs = ("average",)

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def prepare(self, batch: Batch) -> Batch:
        with torch.no_grad():
            logits = batch.supplies.average(batch.x_adv)
        return replace(batch, context={"average": logits})

    def per_example(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        seen.append(batch)
        logits = model(batch.x_adv)
        return cross_entropy_per_example(logits, batch.y) + self.weight * kl_divergence(batch.context["average"], logits)


class TwoViews(Objective):
    """AT on both views of each image (consistency regularization's shape)."""

    attack_loss, attack_init, attack_bn_mode = "ce", "uniform", BNMode.EVAL
    needs = ("views",)

    def per_example(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        seen.append(batch)
        (second,) = batch.views_adv
        return (cross_entropy_per_example(model(batch.x_adv), batch.y)
                + cross_entropy_per_example(model(second), batch.y)) / 2


class FromTeachers(Objective):
    """Distillation on x' from the teachers' predictions (KD's shape)."""

    attack_loss, attack_init, attack_bn_mode = "ce", "uniform", BNMode.TRAIN
    needs = ("teachers",)

    def __init__(self, teachers: list = ()) -> None:
        self.teachers = tuple(teachers)

    def prepare(self, batch: Batch) -> Batch:
        with torch.no_grad():
            logits = [t(batch.x_adv) for t in batch.supplies.teachers]
        return replace(batch, context={f"teacher{i}": z for i, z in enumerate(logits)})

    def per_example(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        seen.append(batch)
        logits = model(batch.x_adv)
        return sum(kl_divergence(z, logits) for z in batch.context.values())


class Floored(Wrapper):
    """Loss scaling by the loss value (MLCAT's shape): the update sees max(ℓ, c) with no
    gradient below c; the perturbation sees the base's ℓ."""

    def __init__(self, objectives, base: str = "at", floor: float = 1.5) -> None:
        super().__init__(objectives, base)
        self.floor = floor

    def descent_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.where(losses < self.floor, torch.full_like(losses, self.floor), losses)


def train(tmp_path, *overrides: str) -> int:
    return main(["train", *TINY, *overrides, f"run.out_dir={tmp_path}", "run.name=r"])


# ---------------------------------------------------------------------- the weight average


@needs_fmnist
def test_an_objective_that_needs_the_average_is_handed_the_runs_weight_average(tmp_path, register, capsys):
    register("toy-average", TowardsTheAverage)
    assert train(tmp_path, "objective.name=toy-average", "objective.toy-average.weight=0.5", "run.ema=0.9") == 0
    averages = {id(b.supplies.average) for b in seen}
    assert len(seen) == 128 // 32 and len(averages) == 1  # one average, every step
    average = seen[-1].supplies.average
    assert not average.training and not any(p.requires_grad for p in average.parameters())
    # it is the run's average itself: after the last step it holds what ema_last.pt holds
    saved = load_checkpoint(tmp_path / "r" / "ema_last.pt")["model"]
    assert all(torch.equal(t, saved[k]) for k, t in average.state_dict().items())
    assert all(b.context["average"].shape == (32, 10) for b in seen)


@needs_fmnist
def test_an_objective_that_needs_the_average_is_refused_without_one(tmp_path, register, capsys):
    register("toy-average", TowardsTheAverage)
    assert train(tmp_path, "objective.name=toy-average") == 2
    assert "run.ema" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- a second view


@needs_fmnist
def test_an_objective_that_needs_a_second_view_gets_one_with_its_adversarial_example(tmp_path, register):
    register("toy-views", TwoViews)
    assert train(tmp_path, "objective.name=toy-views", "data.augment=flip") == 0
    assert len(seen) == 128 // 32
    eps = load_config(TINY[0]).attack.eps
    for batch in seen:
        (view,), (view_adv,) = batch.views, batch.views_adv
        assert view.shape == batch.x.shape
        # the same images, flipped by independent draws: each view example is x or its mirror
        same = (view == batch.x).flatten(1).all(1)
        mirrored = (view == batch.x.flip(3)).flatten(1).all(1)
        assert bool((same | mirrored).all()) and not bool(same.all())
        assert float((view_adv - view).abs().max()) <= eps + 1e-6 and not torch.equal(view_adv, view)


@pytest.mark.parametrize("override, key", [("data.mix=mixup", "data.mix"),
                                           ("data.extra_fraction=0.5", "data.extra_fraction")])
def test_a_second_view_is_refused_where_the_data_cannot_give_one(override, key, register):
    register("toy-views", TwoViews)
    extra = ["data.extra=somewhere.npz"] if "extra" in override else []
    with pytest.raises(WpatError, match=key):
        experiment.build_components(load_config(None, ["objective.name=toy-views", override, *extra]))


def test_the_first_of_two_views_is_the_batch_one_view_gives():
    x, y = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (64,))
    kw = dict(shuffle=True, drop_last=True, augment="flip", cutout=3, seed=3)
    for (x1, y1), (x2, y2, view) in zip(DeviceLoader(x, y, 16, **kw), DeviceLoader(x, y, 16, views=2, **kw)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(view, x2)


# ---------------------------------------------------------------------- teachers


@needs_fmnist
def test_an_objective_that_needs_teachers_gets_the_models_of_the_checkpoints_it_names(tmp_path, register, capsys):
    register("toy-teachers", FromTeachers)
    assert train(tmp_path, "objective.name=toy-teachers",
                 f"objective.toy-teachers.teachers=[{FIXTURE_RUN},{FIXTURE_RUN}]") == 0
    teachers = seen[-1].supplies.teachers
    stored = load_checkpoint(FIXTURE_RUN)["model"]
    assert len(teachers) == 2 and teachers[0] is not teachers[1]
    for teacher in teachers:
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        # the stored weights and BN statistics, untouched by training
        assert all(torch.equal(t, stored[k]) for k, t in teacher.state_dict().items() if t.is_floating_point())
    assert train(tmp_path / "missing", "objective.name=toy-teachers",
                 f"objective.toy-teachers.teachers=[{tmp_path / 'nowhere.pt'}]") == 2
    assert "nowhere.pt" in capsys.readouterr().err


# ---------------------------------------------------------------------- a wrapped objective


def test_a_wrapper_gets_its_base_built_from_the_base_objectives_own_options(register):
    register("toy-floored", Floored)
    cfg = load_config(None, ["objective.name=toy-floored", "objective.toy-floored.base=trades",
                             "objective.toy-floored.floor=0.5", "objective.trades.beta=3"])
    objective = experiment.build_components(cfg).objective
    assert isinstance(objective.base, TRADES) and objective.base.beta == 3 and objective.floor == 0.5
    # the training attack is the base's (TRADES: KL from a normal start, eval-mode BN)
    attack = experiment.train_attack(cfg, objective)
    assert attack.loss is ATTACK_LOSSES.get("kl") and attack.bn_mode is BNMode.EVAL
    for bad in ("objective.toy-floored.base=nothing", "objective.toy-floored.base=toy-floored"):
        with pytest.raises(WpatError, match="base"):
            experiment.build_components(load_config(None, ["objective.name=toy-floored", bad]))


class Recorder(WeightPerturbation):
    """A perturbation that looks at the loss it is handed, and moves nothing."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def compute(self, model, loss_fn, losses=None, start=None) -> Perturbation:
        self.losses.append(loss_fn(model).detach())
        return Perturbation({}, {}, moved=False)


def test_the_perturbation_sees_the_base_loss_and_the_update_the_wrappers(register):
    """A floor above every loss: the wrapper's descent losses are constant (no gradient, so
    SGD leaves the weights as they are), while the perturbation was handed the base's losses."""
    register("toy-floored", Floored)
    objective = experiment.objective_from_config(load_config(None, ["objective.name=toy-floored",
                                                                     "objective.toy-floored.floor=100"]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    before = copy.deepcopy(model.state_dict())
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    x_adv = (x + 0.05).clamp(0, 1)
    recorder = Recorder()
    losses, _ = train_step(model, Batch(x, y), lambda m, a, b: x_adv, objective, recorder,
                           torch.optim.SGD(model.parameters(), lr=1.0))
    expected = F.cross_entropy(model(x_adv), y, reduction="none")
    torch.testing.assert_close(recorder.losses[0], expected)  # AT's losses, not the floor
    torch.testing.assert_close(losses, expected)  # and the logged ones
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())


@needs_fmnist
def test_a_wrapper_trains_through_wpat_train_and_logs_its_bases_losses(tmp_path, register):
    register("toy-floored", Floored)
    assert train(tmp_path, "objective.name=toy-floored", "objective.toy-floored.base=trades",
                 "objective.toy-floored.floor=100", "perturb.name=rwp", "perturb.rwp.steps=2") == 0
    record = load_checkpoint(tmp_path / "r" / "last.pt")["history"][-1]
    assert 0 < record["train_loss"] < 100  # TRADES' losses, not the floor the update minimised


# ---------------------------------------------------------------------- where the run is, and state


class Counting(Objective):
    """AT that counts its training steps in its own state (DKL's class prior has this shape:
    values carried from step to step, saved in last.pt)."""

    attack_loss, attack_init, attack_bn_mode = "ce", "uniform", BNMode.TRAIN

    def __init__(self) -> None:
        self.steps = torch.zeros(())

    def per_example(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        seen.append(batch)
        return cross_entropy_per_example(model(batch.x_adv), batch.y)

    def descent_losses(self, losses: torch.Tensor) -> torch.Tensor:
        self.steps = self.steps + 1
        return losses

    def state(self) -> dict:
        return {"steps": self.steps}

    def load_state(self, state) -> None:
        self.steps = state["steps"]


@needs_fmnist
def test_every_batch_knows_where_the_run_is_and_the_objectives_state_survives_a_resume(tmp_path, register,
                                                                                        monkeypatch):
    import wpat.training.loop as training

    register("toy-counting", Counting)

    def cfg(name: str):
        return load_config(TINY[0], [*TINY[1:], "objective.name=toy-counting", "schedule.epochs=2",
                                     "run.checkpoint_every=1", f"run.out_dir={tmp_path}", f"run.name={name}"])

    training.train(cfg("whole"))
    assert [(b.phase.epoch, b.phase.step) for b in seen] == [(e, i) for e in range(2) for i in range(4)]
    assert {(b.phase.epochs, b.phase.steps) for b in seen} == {(2, 4)}
    assert float(load_checkpoint(tmp_path / "whole" / "last.pt")["objective"]["steps"]) == 8
    real = training.train_step
    monkeypatch.setattr(training, "train_step", crashing_at_call(real, 6))  # epoch 2, its second step
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg("cut"))
    monkeypatch.setattr(training, "train_step", real)
    assert float(load_checkpoint(tmp_path / "cut" / "last.pt")["objective"]["steps"]) == 5
    seen.clear()
    training.resume(tmp_path / "cut")  # a new objective, its state from last.pt
    assert [(b.phase.epoch, b.phase.step) for b in seen] == [(1, 1), (1, 2), (1, 3)]
    assert float(load_checkpoint(tmp_path / "cut" / "last.pt")["objective"]["steps"]) == 8
