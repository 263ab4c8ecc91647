"""The AWP paper's other training settings: L1/L2 weight regularization, weight averaging (EMA),
AT-ES early stopping, pre-training then fine-tuning."""

import copy

import pytest
import torch
import torch.nn.functional as F


from conftest import SEED, fashion_mnist_available
from wpat.training import experiment
from wpat.optim.averaging import WeightAverage
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.training.finetune import init_from
from wpat.models import build_model
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb import AWP
from wpat.optim.regularize import l1_penalty, parameter_groups
from wpat.training.step import train_step
import wpat.training.loop
from wpat.training.run_state import RunState
from wpat.training.loop import fit, resume, train
from wpat.training.parts import build_parts

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

TINY = ["model.small_cnn.width=4", "data.train_subset=256", "data.test_subset=64", "data.batch_size=64",
        "eval.n_train=32", "attack.steps=1", "eval.steps=2", "run.progress=false", "run.threads=1",
        "perturb.rwp.steps=2", f"run.seed={SEED}"]


def small_model():
    return build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.3,), width=4)


# ---------------------------------------------------------------------- L1 / L2


def test_l2_decays_exactly_the_conv_and_linear_weights():
    model = small_model()
    decayed, rest = parameter_groups(model, 5e-4, 5e-3)
    assert decayed["weight_decay"] == 5e-3 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == sorted(
        n for n, p in model.named_parameters() if p.dim() > 1)
    assert all(p.dim() == 1 for p in rest["params"])  # BN affine parameters and biases
    (only,) = parameter_groups(model, 5e-4, 0.0)
    assert only["weight_decay"] == 5e-4 and len(only["params"]) == len(list(model.parameters()))


def test_l1_is_the_hand_written_penalty_on_conv_and_linear_weights_at_w_plus_v():
    torch.manual_seed(0)
    model = small_model()
    hand = sum(p.abs().sum() for n, p in model.named_parameters() if "bn" not in n and "bias" not in n
               and p.dim() > 1)
    torch.testing.assert_close(l1_penalty(model, 5e-6), 5e-6 * hand)
    assert l1_penalty(model, 0.0) == 0.0

    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    other = copy.deepcopy(model)
    fixed = lambda m, a, b: x  # noqa: E731  (x_adv = x: the penalty is what is tested)
    objective = OBJECTIVES.build("at")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0)
    torch.manual_seed(1)
    train_step(model, Batch(x, y), fixed, objective, AWP(gamma=0.01), opt, l1=1e-3)
    # by hand: v from the plain loss, then CE + λ Σ|w + v| at w + v
    other.train()
    v = AWP(gamma=0.01).compute(other, lambda m: F.cross_entropy(m(x), y, reduction="none")).v
    params = dict(other.named_parameters())
    with torch.no_grad():
        for n, t in v.items():
            params[n].add_(t)
    loss = F.cross_entropy(other(x), y) + 1e-3 * sum(p.abs().sum() for p in other.parameters() if p.dim() > 1)
    grads = torch.autograd.grad(loss, list(other.parameters()))
    for (n, p), g in zip(model.named_parameters(), grads):
        expected = params[n].detach() - 0.1 * g - v.get(n, 0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6, msg=n)


def script_group_rates(lr_max: float, rates: list[float]) -> list[float]:
    """The scripts' loop (train_cifar10.py with --l2): two groups built at lr_max, then
    ``opt.param_groups[0].update(lr=lr)`` before every batch; the second group is never set."""
    groups = [{"lr": lr_max}, {"lr": lr_max}]
    for lr in rates:
        groups[0].update(lr=lr)
    return [g["lr"] for g in groups]


@needs_fmnist
@pytest.mark.parametrize("lr_groups", ["first", "all"])
def test_the_l2_scripts_schedule_only_the_first_parameter_group(tmp_path, lr_groups):
    """optim.lr_groups=first (the -l2reg presets) leaves BN parameters and biases at optim.lr for
    the whole run, as the scripts do; all (the default) schedules both groups."""
    cfg = load_config("fmnist-smallcnn-linf", [*TINY, "perturb.name=none", "optim.l2=5e-3", "optim.weight_decay=0",
                                               f"optim.lr_groups={lr_groups}", "schedule.name=piecewise",
                                               "schedule.epochs=2", "schedule.piecewise.milestones=[0.25]",
                                               f"run.out_dir={tmp_path}"])
    train(cfg)
    groups = load_checkpoint(tmp_path / cfg.run.name / "last.pt")["optimizer"]["param_groups"]
    assert len(groups) == 2  # conv/linear weights; BN parameters and biases
    schedule = experiment.schedule_from_config(cfg)
    rates = [schedule(t / 4, 0.1) for t in range(8)]  # step_start: t = e + i/N, N = 4
    expected = script_group_rates(0.1, rates) if lr_groups == "first" else [rates[-1]] * 2
    assert [g["lr"] for g in groups] == pytest.approx(expected) and expected[0] == pytest.approx(0.01)


def test_the_l2_presets_reproduce_the_scripts_learning_rates():
    for preset in ("cifar10-preactresnet18-linf-l2reg", "cifar10-preactresnet18-l2-l2reg"):
        assert load_config(preset).optim.lr_groups == "first"
    assert load_config("cifar10-preactresnet18-linf").optim.lr_groups == "all"


# ---------------------------------------------------------------------- EMA


def test_ema_is_the_hand_computed_average_of_w_never_of_w_plus_v():
    torch.manual_seed(0)
    model = small_model()
    ema = WeightAverage(model, decay=0.9)
    expected = {k: v.clone().float() for k, v in model.state_dict().items()}
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(4):
        train_step(model, Batch(x, y), lambda m, a, b: x, OBJECTIVES.build("at"), AWP(gamma=0.5), opt)
        d = min(0.9, (1 + t) / (10 + t))
        for k, w in model.state_dict().items():  # w: v has been subtracted again
            expected[k] = d * expected[k] + (1 - d) * w.float() if w.dtype.is_floating_point else w.clone()
        ema.update(model, epoch=0)
    for k, v in ema.model.state_dict().items():
        torch.testing.assert_close(v.float(), expected[k].float(), rtol=1e-5, atol=1e-7, msg=k)


@needs_fmnist
def test_a_run_with_ema_resumes_bitwise_and_reports_its_own_checkpoints(tmp_path):
    common = [*TINY, "schedule.epochs=2", "run.ema=0.9", f"run.out_dir={tmp_path}"]
    whole = train(load_config("fmnist-smallcnn-linf", [*common, "run.name=whole"]))
    cut = load_config("fmnist-smallcnn-linf", [*common, "run.name=cut", "schedule.epochs=2"])
    parts = build_parts(cut)
    (tmp_path / "cut").mkdir(parents=True)
    real_fit_epochs = cut.schedule.epochs
    cut.schedule.epochs = 1  # stop after one epoch, then resume with the full length
    fit(parts, RunState(), tmp_path / "cut")
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    ckpt["config"]["schedule"]["epochs"] = real_fit_epochs
    torch.save(ckpt, tmp_path / "cut" / "last.pt")
    resumed = resume(tmp_path / "cut")
    a = load_checkpoint(tmp_path / "whole" / "ema_last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "ema_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {"ema_best.pt", "ema_last.pt"} <= {p.name for p in (tmp_path / "whole").iterdir()}
    assert "ema_test_pgd_acc" in whole["last"] and whole["ema_last"]["epoch"] == 2
    assert resumed["ema_last"]["test_pgd_acc"] == whole["ema_last"]["test_pgd_acc"]
    # wpat eval gives the average its own rows
    assert main(["eval", str(tmp_path / "whole"), "--attacks", "natural", "--n-examples", "16", "--no-checks",
                 "--no-progress"]) == 0
    import json

    report = json.loads((tmp_path / "whole" / "eval.json").read_text())
    assert list(report["checkpoints"]) == ["best", "last", "ema_best", "ema_last"]


# ---------------------------------------------------------------------- AT-ES


@needs_fmnist
def test_early_stopping_stops_on_a_scripted_metric_and_keeps_the_best(tmp_path, monkeypatch, capsys):
    scripted = iter([0.30, 0.40, 0.35, 0.38, 0.39, 0.90])  # best at epoch 2, patience 3

    def measure(parts, model):
        value = next(scripted)
        return {"test_nat_acc": value, "test_pgd_acc": value, "train_nat_acc": value, "train_pgd_acc": value,
                "robust_gap": 0.0, "val_nat_acc": value, "val_pgd_acc": value}

    monkeypatch.setattr(wpat.training.loop, "measure", measure)
    cfg = load_config("fmnist-smallcnn-linf", [*TINY, "schedule.epochs=6", "data.val_size=64", "run.select=val",
                                               "run.patience=3", f"run.out_dir={tmp_path}", "run.name=es"])
    summary = train(cfg)
    assert summary["stopped_early"] and summary["last"]["epoch"] == 5 and summary["best_epoch"] == 2
    assert load_checkpoint(tmp_path / "es" / "best.pt")["epoch"] == 2
    assert "early stopping after epoch 5" in capsys.readouterr().out


# ---------------------------------------------------------------------- fine-tuning


def test_init_from_takes_every_weight_and_reinitialises_only_a_head_of_another_size(tmp_path):
    torch.manual_seed(0)
    five = build_model("small_cnn", num_classes=5, in_channels=1, mean=(0.3,), std=(0.3,), width=4)
    torch.save({"module." + k: v for k, v in five.state_dict().items()}, tmp_path / "plain.pt")
    ten = small_model()
    replaced = init_from(ten, tmp_path / "plain.pt")
    assert replaced and all(k.startswith("net.") for k in replaced)
    theirs, ours = five.state_dict(), ten.state_dict()
    for k in ours:
        if k in replaced:
            assert ours[k].shape != theirs[k].shape
        elif not k.startswith("normalize."):
            assert torch.equal(ours[k], theirs[k]), k
    same = build_model("small_cnn", num_classes=5, in_channels=1, mean=(0.3,), std=(0.3,), width=4)
    assert init_from(same, tmp_path / "plain.pt") == []
    wider = build_model("small_cnn", num_classes=5, in_channels=1, mean=(0.3,), std=(0.3,), width=8)
    with pytest.raises(WpatError, match="not weights of this architecture"):
        init_from(wider, tmp_path / "plain.pt")


@needs_fmnist
def test_pretrain_on_five_classes_then_finetune_on_the_other_five(tmp_path, capsys):
    pre = load_config("fmnist-smallcnn-linf", [*TINY, "schedule.epochs=1", "data.classes=[0,1,2,3,4]",
                                               f"run.out_dir={tmp_path}", "run.name=pre"])
    train(pre)
    start = load_checkpoint(tmp_path / "pre" / "last.pt")["model"]
    fine = load_config("fmnist-smallcnn-linf-finetune", [*TINY, "schedule.epochs=1", f"run.out_dir={tmp_path}",
                                                        "run.name=fine", f"run.init_from={tmp_path / 'pre' / 'last.pt'}"])
    parts = build_parts(fine)
    loaded = parts.model.state_dict()
    assert all(torch.equal(loaded[k], start[k]) for k in start if "normalize" not in k)  # 5 -> 5 classes
    assert set(parts.splits.y_train.tolist()) == {0, 1, 2, 3, 4}  # classes 5..9 relabelled
    bad = load_config("fmnist-smallcnn-linf", [*TINY, "model.small_cnn.width=8", f"run.out_dir={tmp_path}",
                                               "run.name=bad", f"run.init_from={tmp_path / 'pre' / 'last.pt'}"])
    assert main(["train", "fmnist-smallcnn-linf", *TINY, "model.small_cnn.width=8",
                 f"run.out_dir={tmp_path}", "run.name=bad", f"run.init_from={tmp_path / 'pre' / 'last.pt'}"]) == 2
    assert "not weights of this architecture" in capsys.readouterr().err and bad.run.init_from


@needs_fmnist
@pytest.mark.parametrize("overrides, fix", [
    (["run.checkpoint_every=4"], "expected fewer than the 4 steps of an epoch"),  # 256 images, batches of 64
    (["run.sync_bn=true"], "expected false in one process"),  # not a torchrun launch
    (["attack.script_forwards=true", "objective.name=trades"], "here: eval"),  # TRADES attacks in eval mode
])
def test_run_values_this_data_or_launch_would_ignore_are_refused_before_anything_is_written(overrides, fix, tmp_path,
                                                                                            capsys):
    assert main(["train", "fmnist-smallcnn-linf", *TINY, *overrides, f"run.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wpat: error: {overrides[0].split('=')[0]}: ") and fix in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- bad values


@pytest.mark.parametrize("override, fragment", [
    ("optim.l1=-1", "optim.l1"),
    ("optim.l2=-0.1", "optim.l2"),
    ("run.ema=1.5", "run.ema"),
    ("run.ema=-0.2", "run.ema"),
    ("run.patience=3", "run.patience"),  # without a validation split
    ("data.classes=[3]", "data.classes"),
    ("data.classes=[0,12]", "data.classes"),
    ("data.cutout=-2", "data.cutout"),
    ("data.mix=blend", "data.mix"),
    ("data.mix_alpha=0", "data.mix_alpha"),
])
def test_bad_values_are_one_line(override, fragment):
    with pytest.raises(WpatError, match=fragment) as err:
        experiment.build_components(load_config("fmnist-smallcnn-linf", [override]))
    assert "\n" not in str(err.value)


@needs_fmnist
def test_the_weight_averages_best_epoch_is_its_own_when_the_model_improves_alone(tmp_path, monkeypatch):
    """ema_best.pt follows the average's accuracy: a later epoch where only the raw model gets
    better leaves it at the average's best epoch."""
    scripted = iter([0.30, 0.50, 0.40, 0.45])  # (model, average) per epoch: the model improves in epoch 2 only

    def measure(parts, model):
        value = next(scripted)
        return {"test_nat_acc": value, "test_pgd_acc": value, "train_nat_acc": value, "train_pgd_acc": value,
                "robust_gap": 0.0}

    monkeypatch.setattr(wpat.training.loop, "measure", measure)
    summary = train(load_config("fmnist-smallcnn-linf", [*TINY, "schedule.epochs=2", "run.ema=0.9",
                                                         f"run.out_dir={tmp_path}", "run.name=ema"]))
    assert summary["best_epoch"] == 2 and summary["ema_best"]["epoch"] == 1
    assert summary["ema_best"]["test_pgd_acc"] == 0.50
    assert load_checkpoint(tmp_path / "ema" / "ema_best.pt")["epoch"] == 1
