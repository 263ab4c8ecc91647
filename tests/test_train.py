"""The training loop and `wpat train` end to end on real Fashion-MNIST subsets."""

import json

import pytest
import torch

from conftest import SEED, fashion_mnist_available
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.objectives import Batch
from wpat.training.step import train_step
from wpat.training.loop import resume, train

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist is not installed")

SMALL = ["data.train_subset=1024", "data.test_subset=256", "data.batch_size=64", "eval.n_train=128",
         "model.small_cnn.width=8", "run.threads=1", "run.progress=false", f"run.seed={SEED}"]


def test_cli_trains_and_prints_the_best_last_table(tmp_path, capsys):
    code = main(["train", "fmnist-smallcnn-linf", *SMALL, "schedule.epochs=2", "perturb.rwp.steps=3",
                 f"run.out_dir={tmp_path}", "run.name=cli"])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| checkpoint"))
    assert [c.strip() for c in header.strip("|").split("|")][:4] == ["checkpoint", "epoch", "natural", "PGD-20"]
    assert "| best" in out and "| last" in out
    run = tmp_path / "cli"
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "best.pt", "last.pt"} <= {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("test_nat_acc", "test_pgd_acc", "train_pgd_acc", "robust_gap", "lsc_frac_below",
                "rwp_frac_below", "perturb_steps", "v_over_w", "lsc_hist"):
        assert key in rows[-1], key
    assert rows[-1]["robust_gap"] == pytest.approx(rows[-1]["train_pgd_acc"] - rows[-1]["test_pgd_acc"])
    assert 0 <= rows[-1]["perturb_steps"] <= 3
    assert rows[-1]["v_over_w"] == pytest.approx(0.01, rel=1e-3)  # RWP: ‖v‖ = γ‖W‖ whenever it moves
    assert sum(rows[-1]["lsc_hist"]) == 1024 // 64 * 64
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == max(rows, key=lambda r: r["test_pgd_acc"])["epoch"]
    assert "optimizer" not in best and best["kind"] == "best"


def test_at_rwp_learns(tmp_path):
    cfg = load_config("fmnist-smallcnn-linf", [*SMALL, "data.train_subset=2048", "data.test_subset=500",
                                               "schedule.epochs=2", f"run.out_dir={tmp_path}"])
    summary = train(cfg)
    last = summary["last"]
    assert last["test_nat_acc"] > 0.5 and last["test_pgd_acc"] > 0.3  # chance is 0.1
    assert last["perturb_steps"] > 0 and last["perturb_active"]


@pytest.mark.parametrize("objective, perturb", [("trades", "awp"), ("mart", "rwp"), ("at", "awp-lsc"),
                                                ("at", "random")])
def test_every_objective_runs_with_every_perturbation(tmp_path, objective, perturb):
    cfg = load_config("fmnist-smallcnn-linf", [*SMALL, "data.train_subset=256", "data.test_subset=64",
                                               "eval.n_train=64", "attack.steps=2", "eval.steps=2",
                                               "schedule.epochs=1", f"objective.name={objective}",
                                               f"perturb.name={perturb}", "perturb.awp-lsc.high=1.0",
                                               f"run.out_dir={tmp_path}"])
    summary = train(cfg)
    assert summary["last"]["perturb_active"] and torch.isfinite(torch.tensor(summary["last"]["train_loss"]))


def test_warmup_delays_the_perturbation(tmp_path):
    cfg = load_config("fmnist-smallcnn-linf", [*SMALL, "data.train_subset=256", "data.test_subset=64",
                                               "eval.n_train=64", "attack.steps=2", "eval.steps=2",
                                               "schedule.epochs=2", "perturb.warmup=1", f"run.out_dir={tmp_path}"])
    train(cfg)
    rows = load_checkpoint(tmp_path / cfg.run.name / "last.pt")["history"]
    assert [r["perturb_active"] for r in rows] == [False, True]


def test_validation_selection_and_resume_of_a_finished_run(tmp_path):
    cfg = load_config("fmnist-smallcnn-linf", [*SMALL, "data.train_subset=512", "data.val_size=128",
                                               "data.test_subset=64", "eval.n_train=64", "attack.steps=2",
                                               "eval.steps=2", "schedule.epochs=2", "run.select=val",
                                               f"run.out_dir={tmp_path}"])
    summary = train(cfg)
    best = load_checkpoint(tmp_path / cfg.run.name / "best.pt")
    assert best["best"]["selected_by"] == "val_pgd_acc" and "val_pgd_acc" in summary["last"]
    again = resume(tmp_path / cfg.run.name, progress=False)  # nothing left to do: same summary
    assert again["last"] == summary["last"]


def test_train_step_leaves_weights_at_w_minus_the_update_not_w_plus_v():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    from wpat.attacks import PGD
    from wpat.objectives import OBJECTIVES
    from wpat.perturb import AWP

    w0 = model[1].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    attack = PGD(0.1, 0.05, 1, random_start=False)
    x_adv = attack(model, x, y)
    v = AWP(gamma=0.5).compute(model, lambda m: torch.nn.functional.cross_entropy(m(x_adv), y, reduction="none")).v
    torch.manual_seed(1)
    # the update is the gradient taken at w + v, applied to w (docs/design.md, "One training step", step 5)
    perturbed_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    perturbed_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        perturbed_model[1].weight += v["1.weight"]
    torch.nn.functional.cross_entropy(perturbed_model(x_adv), y).backward()
    expected = w0 - 0.5 * perturbed_model[1].weight.grad
    train_step(model, Batch(x, y), lambda m, a, b: x_adv, OBJECTIVES.build("at"), AWP(gamma=0.5), optimizer)
    assert torch.allclose(model[1].weight, expected, atol=1e-6)


@pytest.mark.parametrize("perturbation", ["rwp-none", "rwp-all", "awp"])
def test_sharing_the_forward_at_w_with_the_search_changes_nothing(perturbation):
    """train_step hands its forward at w to the search (and trains on it when RWP does not move);
    the weights and BN statistics after the step equal the plain recipe: compute, then step at w+v."""
    from wpat.attacks import PGD
    from wpat.models import build_model
    from wpat.objectives import OBJECTIVES
    from wpat.perturb import AWP, RWP, perturbed

    make = {"rwp-none": lambda: RWP(gamma=0.01, c_min=0.0, steps=3),
            "rwp-all": lambda: RWP(gamma=0.01, c_min=float("inf"), steps=3),
            "awp": lambda: AWP(gamma=0.01)}[perturbation]
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    models = [build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.3,), width=4)
              for _ in range(2)]
    objective = OBJECTIVES.build("at")
    x_adv = PGD(0.1, 0.05, 2)(models[0], x, y)
    models[1].load_state_dict(models[0].state_dict())
    fixed_attack = lambda m, a, b: x_adv  # noqa: E731
    shared, plain = models
    train_step(shared, Batch(x, y), fixed_attack, objective, make(), torch.optim.SGD(shared.parameters(), lr=0.1))

    plain.train()
    loss_fn = lambda m: objective.per_example(m, Batch(x, y, x_adv=x_adv))  # noqa: E731
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    v = make().compute(plain, loss_fn).v
    with perturbed(plain, v):
        optimizer.zero_grad()
        loss_fn(plain).mean().backward()
        optimizer.step()
    for (name, a), b in zip(shared.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_bf16_autocast_trains_with_fp32_weights_and_evaluation(tmp_path):
    cfg = load_config("fmnist-smallcnn-linf", [*SMALL, "data.train_subset=256", "data.test_subset=64",
                                               "eval.n_train=64", "attack.steps=2", "eval.steps=2",
                                               "schedule.epochs=1", "run.amp=true", f"run.out_dir={tmp_path}"])
    summary = train(cfg)
    assert torch.isfinite(torch.tensor(summary["last"]["train_loss"])) and summary["last"]["perturb_steps"] >= 0
    weights = load_checkpoint(tmp_path / cfg.run.name / "last.pt")["model"]
    assert all(t.dtype in (torch.float32, torch.int64) for t in weights.values())


def test_an_own_evaluation_generator_keeps_the_evaluation_out_of_the_training(tmp_path):
    """With `eval.own_rng`, evaluating after every epoch or only after the last trains the same
    weights and measures the last epoch the same; with the global generator (the authors' scripts)
    the per-epoch evaluation's PGD random starts shift the training attack's draws."""
    tiny = [*SMALL, "model.small_cnn.width=4", "data.train_subset=128", "data.test_subset=32", "eval.n_train=32",
            "attack.steps=2", "eval.steps=2", "schedule.epochs=2", f"run.out_dir={tmp_path}"]

    def trained(own_rng: bool, every: int) -> tuple[dict, float]:
        name = f"own{int(own_rng)}-every{every}"
        summary = train(load_config("fmnist-smallcnn-linf", [*tiny, f"eval.own_rng={own_rng}",
                                                             f"eval.every={every}", f"run.name={name}"]))
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        weights = load_checkpoint(tmp_path / name / "last.pt")["model"]
        assert [("test_pgd_acc" in r) for r in rows] == [every == 1, True], summary
        return weights, rows[-1]["test_pgd_acc"]

    def same(a: dict, b: dict) -> bool:
        return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)

    own_each, own_each_acc = trained(True, 1)
    own_last, own_last_acc = trained(True, 2)
    assert same(own_each, own_last) and own_each_acc == own_last_acc
    shared_each, _ = trained(False, 1)
    shared_last, _ = trained(False, 2)
    assert not same(shared_each, shared_last)
