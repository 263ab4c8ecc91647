"""ReBAT (objective ``rebat``, the weight average's ``run.ema_start``, ``attack.later_*``) against a
rendition of the authors' ``train_cifar_wa.py``, and through ``wpat train``.

The rendition below follows PKU-ML/ReBAT ``train_cifar_wa.py`` (the training loop) and ``utils.py``
(``attack_pgd``, ``moving_average``) literally for a few steps, with the script's arguments
scaled down: ``--warmup-epochs`` (decay 0 before, BoAT off), ``--lr-factor`` with ``--stage1``/
``--stage2``, ``--stronger-attack``. It shares no code with wpat. Two documented departures are
left out of it: the WA model runs in eval mode (the script's is in train mode during its first
BoAT epoch only), and the script's clean train-mode forward after each step, for its log, is not
run (docs/reproduction.md, "ReBAT and KD+SWA").
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import BNNet, SEED, crashing_at_call, fashion_mnist_available
from wpat.training import experiment
from wpat.attacks import PGD
from wpat.optim.averaging import WeightAverage
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.configuration.config import ScheduleConfig, load_config
from wpat.objectives import OBJECTIVES, Batch, Supplies
from wpat.optim.schedules import Piecewise
from wpat.training.step import schedule_time, train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

TINY = ["fmnist-mlp-linf-overfit-rebat", "model.mlp.hidden=16", "data.train_subset=100", "data.test_subset=20",
        "data.batch_size=25", "eval.n_train=20", "eval.steps=1", "eval.every=1", "attack.steps=2",
        "schedule.epochs=3", "run.ema_start=1", "run.threads=1", "run.progress=false", "run.tensorboard=false",
        f"run.seed={SEED}"]


def train(tmp_path, *overrides: str) -> int:
    return main(["train", *TINY, *overrides, f"run.out_dir={tmp_path}", "run.name=r"])


# ---------------------------------------------------------------------- the script


def Net() -> BNNet:
    return BNNet(last_scale=3)


def clamp(X, lower_limit, upper_limit):
    return torch.max(torch.min(X, upper_limit), lower_limit)


def their_attack_pgd(model, X, y, epsilon, alpha, attack_iters):
    """utils.attack_pgd with restarts=1, norm l_inf, no early stop, no mixup."""
    max_loss = torch.zeros(y.shape[0])
    max_delta = torch.zeros_like(X)
    delta = torch.zeros_like(X)
    delta.uniform_(-epsilon, epsilon)
    delta = clamp(delta, 0 - X, 1 - X)
    delta.requires_grad = True
    for _ in range(attack_iters):
        output = model(X + delta)
        loss = F.cross_entropy(output, y)
        loss.backward()
        grad = delta.grad.detach()
        d = torch.clamp(delta + alpha * torch.sign(grad), min=-epsilon, max=epsilon)
        d = clamp(d, 0 - X, 1 - X)
        delta.data = d
        delta.grad.zero_()
    output = model(X + delta)
    all_loss = F.cross_entropy(output, y, reduction="none")
    max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
    return max_delta


def their_moving_average(net1, net2, decay_rate=0.0):
    for param1, param2 in zip(net1.parameters(), net2.parameters()):
        param1.data *= decay_rate
        param1.data += param2.data * (1 - decay_rate)
    for module1, module2 in zip(net1.modules(), net2.modules()):
        if isinstance(module1, torch.nn.modules.batchnorm._BatchNorm):
            module1.running_mean *= decay_rate
            module1.running_mean += module2.running_mean * (1 - decay_rate)
            module1.running_var *= decay_rate
            module1.running_var += module2.running_var * (1 - decay_rate)
            module1.num_batches_tracked = module2.num_batches_tracked


# The script's arguments, scaled: 3 epochs of 2 batches, decays at t = 1.5 and 2.25 (of 3 epochs,
# the milestones 0.5 and 0.75), WA and BoAT from epoch 1, the stronger attack once epoch >= stage1
# (from epoch 2).
EPOCHS, BATCHES, LR_MAX, FACTOR, STAGE1, STAGE2 = 3, 2, 0.1, 1.7, 1.5, 2.25
WARMUP, DECAY, BETA = 1, 0.999, 1.5
EPS, ALPHA, ITERS, STRONG_EPS, STRONG_ITERS = 8 / 255, 2 / 255, 2, 10 / 255, 3


def their_run(model, data):
    model_wa = copy.deepcopy(model).eval()  # eval mode: the script's mode after its first BoAT epoch
    opt = torch.optim.SGD(model.parameters(), lr=LR_MAX, momentum=0.9, weight_decay=5e-4)

    def lr_schedule(t):
        if t < STAGE1:
            return LR_MAX
        elif t < STAGE2:
            return LR_MAX / FACTOR
        return LR_MAX / FACTOR ** 2

    for epoch in range(EPOCHS):
        model.train()
        decay_rate = DECAY if epoch >= WARMUP else 0.
        beta = BETA if epoch >= WARMUP else 0.
        for i, (X, y) in enumerate(data):
            lr = lr_schedule(epoch + (i + 1) / len(data))
            opt.param_groups[0].update(lr=lr)
            if epoch < STAGE1:
                delta = their_attack_pgd(model, X, y, EPS, ALPHA, ITERS)
            else:
                delta = their_attack_pgd(model, X, y, STRONG_EPS, ALPHA, STRONG_ITERS)
            delta = delta.detach()
            robust_output = model(torch.clamp(X + delta[:X.size(0)], min=0, max=1))
            robust_loss = F.cross_entropy(robust_output, y)
            if beta > 0:
                with torch.no_grad():
                    robust_output_wa = model_wa(torch.clamp(X + delta[:X.size(0)], min=0, max=1))
                reg_loss = F.kl_div(F.log_softmax(robust_output, dim=1), F.softmax(robust_output_wa, dim=1),
                                    reduction="batchmean")
                if reg_loss < 1e10:
                    robust_loss += reg_loss * beta
            opt.zero_grad()
            robust_loss.backward()
            opt.step()
            their_moving_average(model_wa, model, decay_rate)
    return model, model_wa


def wpat_run(model, data):
    """The same steps through wpat's pieces, as the loop combines them (wpat.training.loop.train_epoch):
    the schedule read at step_end, the later attack from its epoch, the average handed to the
    objective only once it averages, the average updated after every step."""
    objective = OBJECTIVES.build("rebat", beta=BETA)
    average = WeightAverage(model, DECAY, start=WARMUP, ramp=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR_MAX, momentum=0.9, weight_decay=5e-4)
    schedule = Piecewise(epochs=EPOCHS, milestones=(0.5, 0.75), decay=1 / FACTOR)
    timing = ScheduleConfig(update="step_end", first_epoch=0)
    for epoch in range(EPOCHS):
        later = epoch >= 2  # attack.later_from
        attack = PGD(STRONG_EPS if later else EPS, ALPHA, STRONG_ITERS if later else ITERS, bn_mode="train")
        supplies = Supplies(average=average.model if average.active(epoch) else None)
        for i, (x, y) in enumerate(data):
            for group in optimizer.param_groups:
                group["lr"] = schedule(schedule_time(epoch, i, len(data), timing), LR_MAX)
            train_step(model, Batch(x, y, supplies=supplies), attack, objective, None, optimizer,
                       score_forward=True)
            average.update(model, epoch)
    return model, average.model


def test_rebat_steps_equal_a_rendition_of_the_authors_script():
    torch.manual_seed(SEED)
    model = Net()
    generator = torch.Generator().manual_seed(SEED)
    data = [(torch.rand(16, 3, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(BATCHES)]
    torch.manual_seed(SEED + 1)
    theirs, theirs_wa = their_run(copy.deepcopy(model), data)
    torch.manual_seed(SEED + 1)  # the attacks' random starts: the same draws in the same order
    ours, ours_wa = wpat_run(copy.deepcopy(model), data)
    for a, b in ((theirs, ours), (theirs_wa, ours_wa)):
        for (key, t), u in zip(a.state_dict().items(), b.state_dict().values()):
            if t.is_floating_point():
                torch.testing.assert_close(u, t, rtol=1e-4, atol=1e-6, msg=key)
            else:
                assert torch.equal(u, t), key
    # and the average did move away from the weights (BoAT had something to pull towards)
    assert not torch.allclose(ours.linear.weight, ours_wa.linear.weight, rtol=0, atol=1e-6)


def test_before_its_start_the_average_is_the_weights_bit_for_bit_then_decays_without_a_ramp():
    torch.manual_seed(SEED)
    model = Net()
    average = WeightAverage(model, 0.9, start=2, ramp=False)
    for epoch in (0, 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(model, epoch)
        assert all(torch.equal(a, b) for a, b in zip(average.model.state_dict().values(),
                                                     model.state_dict().values()))
        assert not average.active(epoch) and average.updates == 0
    before = copy.deepcopy(average.model.state_dict())
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    average.update(model, 2)
    expected = 0.9 * before["linear.weight"] + 0.1 * model.linear.weight
    torch.testing.assert_close(average.model.linear.weight, expected)  # d = 0.9 at once: no ramp


def test_the_presets_learning_rates_are_the_scripts_lr_factor():
    """--lr-factor f is the piecewise schedule's decay 1/f: the rate at every step's t equals the
    script's lr_schedule (stage1 100, stage2 150, read at epoch + (i + 1)/N)."""
    n = 382  # 49,000 training images in batches of 128
    for preset, f in (("cifar10-preactresnet18-rebat", 1.5), ("cifar10-preactresnet18-rebatpp", 1.7),
                      ("cifar10-wrn34-10-rebat", 4.0)):
        cfg = load_config(preset)
        schedule = Piecewise(epochs=200, **cfg.schedule.options["piecewise"])
        for epoch in (0, 99, 100, 149, 150, 199):
            for i in (0, n - 2, n - 1):
                t = epoch + (i + 1) / n
                theirs = 0.1 if t < 100 else 0.1 / f if t < 150 else 0.1 / f ** 2
                ours = schedule(schedule_time(epoch, i, n, cfg.schedule), cfg.optim.lr)
                assert ours == pytest.approx(theirs, rel=1e-12), (preset, epoch, i)
        assert (cfg.run.ema, cfg.run.ema_start, cfg.run.ema_ramp, cfg.data.val_size) == (0.999, 105, False, 1000)
    strong = load_config("cifar10-preactresnet18-rebatpp").attack
    assert (strong.later_from, strong.later_eps, strong.later_steps, strong.eps) == (100, 10 / 255, 12, 8 / 255)


# ---------------------------------------------------------------------- through wpat train


@needs_fmnist
def test_boat_starts_with_the_average_and_the_attack_changes_at_its_epoch(tmp_path, monkeypatch):
    import wpat.training.loop as training

    seen = []
    real = training.train_step

    def spy(model, batch, attack, *args, **kwargs):
        seen.append((batch.supplies.average is not None, attack.eps, attack.steps))
        return real(model, batch, attack, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", spy)
    assert train(tmp_path, "attack.later_from=2", "attack.later_eps=0.12", "attack.later_steps=3") == 0
    assert seen == [(False, 0.1, 2)] * 4 + [(True, 0.1, 2)] * 4 + [(True, 0.12, 3)] * 4
    summary = load_checkpoint(tmp_path / "r" / "last.pt")
    assert summary["ema"]["updates"] == 8  # decaying updates from epoch 1 on
    # evaluation keeps the threat model
    assert experiment.build_components(load_config(str(tmp_path / "r" / "config.yaml"))).test_attack.eps == 0.1


@needs_fmnist
@pytest.mark.parametrize("perturb", ["none", "awp", "rwp"])
def test_rebat_trains_from_its_preset_and_with_a_weight_perturbation(tmp_path, perturb):
    assert train(tmp_path, f"perturb.name={perturb}", "schedule.epochs=2") == 0
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["history"][-1]["perturb_active"] == (perturb != "none")
    assert {"ema_last.pt", "ema_best.pt"} <= {p.name for p in (tmp_path / "r").iterdir()}


@pytest.mark.parametrize("overrides, key", [
    (["run.ema=0"], "run.ema"),                          # BoAT needs the average
    (["attack.later_eps=0.12"], "attack.later_eps"),     # no epoch it applies from
    (["attack.later_from=2"], "attack.later_from"),      # changes nothing
    (["run.average=mean"], "run.average"),
    (["run.ema_start=-1"], "run.ema_start"),
    (["objective.rebat.beta=-1"], "beta"),
])
def test_nonsense_is_refused_in_one_line_before_any_data_is_read(tmp_path, capsys, overrides, key):
    assert main(["train", *TINY, *overrides, "data.root=/nonexistent", f"run.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1 and "nonexistent" not in err
    assert not any(tmp_path.iterdir())


@needs_fmnist
def test_a_killed_rebat_run_resumes_bitwise(tmp_path, monkeypatch):
    import wpat.training.loop as training

    common = ["run.checkpoint_every=3", "run.deterministic=true", "attack.later_from=2", "attack.later_eps=0.12"]
    assert train(tmp_path / "whole", *common) == 0
    real = training.train_step
    monkeypatch.setattr(training, "train_step", crashing_at_call(real, 8))  # epoch 2, after its step-3 checkpoint
    with pytest.raises(KeyboardInterrupt):  # the command line would catch it
        training.train(load_config(TINY[0], [*TINY[1:], *common, f"run.out_dir={tmp_path / 'cut'}", "run.name=r"]))
    monkeypatch.setattr(training, "train_step", real)
    assert (load_checkpoint(tmp_path / "cut" / "r" / "last.pt")["epoch"],
            load_checkpoint(tmp_path / "cut" / "r" / "last.pt")["step"]) == (1, 3)
    assert main(["train", "--resume", str(tmp_path / "cut" / "r")]) == 0
    a, b = load_checkpoint(tmp_path / "whole" / "r" / "last.pt"), load_checkpoint(tmp_path / "cut" / "r" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["ema"]["updates"] == b["ema"]["updates"]
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])
