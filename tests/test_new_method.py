"""A new method is one file: a weight perturbation and an objective written here, in the test alone,
train through `wpat train` with `section.<name>.<option>=value` overrides, sweep an option with
`wpat sweep --local`, and `wpat report` plots that option as an ablation axis. No library file
names them: the registries are the only lists of methods.

The commands run in this process (`wpat.cli.main`), where the methods are registered, as a user's
script or a module imported before `wpat.cli.main` would register them.
"""

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wpat
from conftest import fashion_mnist_available
from wpat import cli
from wpat.helpers.errors import check, is_finite
from wpat.helpers.model_state import kept
from wpat.objectives import OBJECTIVES, Batch, Objective
from wpat.perturb import PERTURBATIONS, Perturbation, WeightPerturbation, perturbed_parameters
from wpat.perturb.base import global_norm, rescale_per_layer
from wpat.checkpoints.run_dir import RunDir
from wpat.helpers.threat import BNMode

needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


# ---------------------------------------------------------------------- the method file


class SignAWP(WeightPerturbation):
    """AWP with the sign of the gradient: ``v_l = γ · ‖w_l‖ · sign(g_l) / ‖sign(g_l)‖``.

    Args:
        gamma: relative size γ ≥ 0 of each layer's perturbation (default 0.01).

    Statistics: ``v_over_w``.
    """

    def __init__(self, gamma: float = 0.01) -> None:
        check(is_finite(gamma) and gamma >= 0, "SignAWP gamma", gamma, "a finite number >= 0")
        self.gamma = float(gamma)

    def compute(self, model: nn.Module, loss_fn, losses: Tensor | None = None,
                start: Perturbation | None = None) -> Perturbation:
        names, params = zip(*perturbed_parameters(model))
        with kept(model, params, buffers=True, train=True) as state:
            if losses is None:
                state.forwarded = True
                losses = loss_fn(model)
            grads = torch.autograd.grad(losses.mean(), params, allow_unused=True)
        d = [torch.zeros_like(p) if g is None else g.sign() for p, g in zip(params, grads)]
        v = rescale_per_layer(d, state.w, self.gamma)
        return Perturbation(dict(zip(names, v)), {"v_over_w": global_norm(v) / global_norm(state.w)})


BUILT: list["SmoothAT"] = []


class SmoothAT(Objective):
    """Adversarial training on label-smoothed targets: ``ℓ_i = CE_ε(f(x'_i), y_i)``.

    Args:
        smoothing: the label smoothing ε in [0, 1) (default 0.1).
    """

    attack_loss = "ce"
    attack_init = "uniform"
    attack_bn_mode = BNMode.TRAIN
    soft_targets = False

    def __init__(self, smoothing: float = 0.1) -> None:
        check(is_finite(smoothing) and 0 <= smoothing < 1, "SmoothAT smoothing", smoothing, "a number in [0, 1)")
        self.smoothing = smoothing
        BUILT.append(self)

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(model(batch.x_adv), batch.y, reduction="none", label_smoothing=self.smoothing)


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the two methods as their file would (``@PERTURBATIONS.register("sign-awp")`` on
    the class); the registries are put back after this module, so other tests' lists of the
    registered methods stay the built-in ones."""
    with pytest.MonkeyPatch.context() as patch:
        for registry in (PERTURBATIONS, OBJECTIVES):
            patch.setattr(registry, "_entries", dict(registry._entries))
            patch.setattr(registry, "_info", dict(registry._info))
        PERTURBATIONS.register("sign-awp")(SignAWP)
        OBJECTIVES.register("smooth-at")(SmoothAT)
        yield


# ---------------------------------------------------------------------- using it


# A run of a few seconds: 128 training images, a width-2 CNN, one-step attacks, one epoch.
TINY = ["data.train_subset=128", "data.test_subset=32", "data.batch_size=64", "model.small_cnn.width=2",
        "attack.steps=1", "eval.steps=1", "eval.n_train=32", "schedule.epochs=1", "run.device=cpu",
        "run.tensorboard=false", "run.progress=false"]


def test_no_library_file_names_the_new_methods():
    src = Path(wpat.__file__).parent
    files = [p for p in src.rglob("*") if p.suffix in (".py", ".yaml")]
    assert len(files) > 50
    assert not [p for p in files if "sign-awp" in p.read_text() or "smooth-at" in p.read_text()]


@needs_data
def test_wpat_train_builds_each_new_method_with_its_options(tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli.main(["train", *TINY, "perturb.name=sign-awp", "perturb.sign-awp.gamma=0.02",
                     f"run.out_dir={out}", "run.name=perturb"]) == 0
    record = RunDir(out / "perturb").history()[-1]
    assert record["v_over_w"] == pytest.approx(0.02, rel=1e-4)  # the option reached the method

    BUILT.clear()
    assert cli.main(["train", *TINY, "objective.name=smooth-at", "objective.smooth-at.smoothing=0.3",
                     f"run.out_dir={out}", "run.name=objective"]) == 0
    assert BUILT and {o.smoothing for o in BUILT} == {0.3}
    assert math.isfinite(RunDir(out / "objective").history()[-1]["train_loss"])
    assert RunDir(out / "objective").config().objective.options == {"smooth-at": {"smoothing": 0.3}}

    # their options are checked like every built-in method's, with one line naming the key
    capsys.readouterr()
    assert cli.main(["train", *TINY, "perturb.name=sign-awp", "perturb.sign-awp.gama=0.02",
                     f"run.out_dir={out}", "run.name=bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert "perturb.sign-awp" in err and "its options: gamma" in err and "\n" not in err
    assert not (out / "bad").exists()


@needs_data
def test_a_sweep_of_a_new_option_is_reported_as_an_ablation_axis(tmp_path):
    args = ["sweep", *TINY, "objective.name=smooth-at", "perturb.name=sign-awp", "perturb.sign-awp.gamma=0.02",
            "--grid", "objective.smooth-at.smoothing=0.1,0.3", "--out", str(tmp_path), "--name", "s", "--local"]
    assert cli.main(args) == 0
    sweep = tmp_path / "s"
    for name, smoothing in (("smoothing-0.1__seed-0", 0.1), ("smoothing-0.3__seed-0", 0.3)):
        run = RunDir(sweep / name)
        assert run.config().objective.options["smooth-at"] == {"smoothing": smoothing}
        assert run.history()[-1]["v_over_w"] == pytest.approx(0.02, rel=1e-4)

    assert cli.main(["report", str(sweep)]) == 0
    with open(sweep / "ablation-objective.smooth-at.smoothing.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["objective.smooth-at.smoothing"]) for r in rows) == [0.1, 0.3]
    assert all(r["n"] == "1" for r in rows)
    assert (sweep / "ablation-objective.smooth-at.smoothing.png").stat().st_size > 1000
    assert [p.name for p in sweep.glob("ablation-*.csv")] == ["ablation-objective.smooth-at.smoothing.csv"]
