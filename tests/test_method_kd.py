"""KD+SWA (objective ``kd`` with its teachers, ``run.average=swa``) against a rendition of the
authors' code, and through ``wpat train``.

The rendition follows VITA-Group/Alleviate-Robust-Overfitting literally for a few steps and two
epoch ends: ``utils.train_epoch_adv_dual_teacher`` (advertorch's ``LinfPGDAttack`` on the mean
cross-entropy with ``rand_init``, in the student's train mode; both teachers in eval mode on the
student's adversarial examples; ``loss_fn_kd``), and ``main_adv.py``'s SWA block
(``moving_average(swa_model, model, 1/(swa_n + 1))`` of the parameters, then ``bn_update`` over
the training batches). advertorch's PGD (``rand_init_delta``, ``perturb_iterative``) is written
out as its source does it. It shares no code with wpat.
"""

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import BNNet, SEED, crashing_at_call, fashion_mnist_available
from wpat.attacks import PGD
from wpat.optim.averaging import StochasticWeightAverage
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.objectives import OBJECTIVES, Batch, Supplies
from wpat.training.step import train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

SMALL = ["model.mlp.hidden=16", "data.train_subset=100", "data.test_subset=20", "data.batch_size=25",
         "eval.n_train=20", "eval.steps=1", "eval.every=1", "attack.steps=2", "schedule.epochs=3",
         "run.threads=1", "run.progress=false", "run.tensorboard=false", f"run.seed={SEED}"]
TINY = ["fmnist-mlp-linf-overfit-kd-swa", *SMALL, "run.swa_start=1"]


# ---------------------------------------------------------------------- the authors' code


def Net() -> BNNet:
    return BNNet(last_scale=3)


def clamp(x, min, max):  # advertorch.utils.clamp with float bounds
    return torch.clamp(x, min=min, max=max)


def their_linf_pgd(model, x, y, eps, eps_iter, nb_iter):
    """advertorch LinfPGDAttack(loss_fn=CrossEntropyLoss(), rand_init=True, clip 0..1).perturb."""
    delta = nn.Parameter(torch.zeros_like(x))
    delta.data.uniform_(-1, 1)  # rand_init_delta, ord inf
    delta.data = eps * delta.data
    delta.data = clamp(x + delta.data, min=0.0, max=1.0) - x
    delta.data = clamp(x + delta.data, min=0.0, max=1.0) - x
    for _ in range(nb_iter):  # perturb_iterative
        outputs = model(x + delta)
        loss = F.cross_entropy(outputs, y)
        loss.backward()
        grad_sign = delta.grad.data.sign()
        delta.data = delta.data + eps_iter * grad_sign
        delta.data = clamp(delta.data, -eps, eps)
        delta.data = clamp(x.data + delta.data, 0.0, 1.0) - x.data
        delta.grad.data.zero_()
    return clamp(x + delta, 0.0, 1.0).detach()


def loss_fn_kd(scores, target_scores, T=2.):
    log_scores_norm = F.log_softmax(scores / T, dim=1)
    targets_norm = F.softmax(target_scores / T, dim=1)
    KD_loss_unnorm = -(targets_norm * log_scores_norm)
    KD_loss_unnorm = KD_loss_unnorm.sum(dim=1)
    KD_loss_unnorm = KD_loss_unnorm.mean()
    return KD_loss_unnorm * T ** 2


def moving_average(net1, net2, alpha=1):
    for param1, param2 in zip(net1.parameters(), net2.parameters()):
        param1.data *= (1.0 - alpha)
        param1.data += param2.data * alpha


def bn_update(loader, model):
    model.train()
    momenta = {}
    for module in model.modules():
        if issubclass(module.__class__, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean = torch.zeros_like(module.running_mean)
            module.running_var = torch.ones_like(module.running_var)
            momenta[module] = module.momentum
    n = 0
    for input in loader:
        b = input.data.size(0)
        momentum = b / (n + b)
        for module in momenta.keys():
            module.momentum = momentum
        model(input)
        n += b
    for module in momenta.keys():
        module.momentum = momenta[module]


EPS, ALPHA, ITERS, T, COEF_CE, COEF_KD1, COEF_KD2 = 8 / 255, 2 / 255, 3, 2.0, 0.3, 0.1, 0.6


def their_run(model, teacher1, teacher2, data, bn_batches, epochs):
    swa_model = copy.deepcopy(model)  # a fresh model of the same layout; its parameters are replaced at n = 0
    swa_n = 0
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=5e-4)
    for epoch in range(epochs):
        model.train()
        teacher1.eval()
        teacher2.eval()
        for x, y in data:
            for p in model.parameters():  # ctx_noparamgrad
                p.requires_grad_(False)
            input_adv = their_linf_pgd(model, x, y, EPS, ALPHA, ITERS)
            for p in model.parameters():
                p.requires_grad_(True)
            output_adv = model(input_adv)
            with torch.no_grad():
                target_score1 = teacher1(input_adv)
                target_score2 = teacher2(input_adv)
            loss_KD = loss_fn_kd(output_adv, target_score1, T=T)
            loss_KD2 = loss_fn_kd(output_adv, target_score2, T=T)
            loss = F.cross_entropy(output_adv, y) * COEF_CE + loss_KD * COEF_KD1 + loss_KD2 * COEF_KD2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        moving_average(swa_model, model, 1.0 / (swa_n + 1))  # swa_start 0, swa_c_epochs 1
        swa_n += 1
        bn_update(bn_batches, swa_model)
    return model, swa_model


def wpat_run(model, teacher1, teacher2, data, bn_batches, epochs):
    objective = OBJECTIVES.build("kd", standard_teacher="t1", robust_teacher="t2", temperature=T,
                                 ce_weight=COEF_CE, standard_weight=COEF_KD1, robust_weight=COEF_KD2)
    supplies = Supplies(teachers=(teacher1.eval(), teacher2.eval()))
    average = StochasticWeightAverage(model, start=0, every=1, batches=lambda epoch: iter(bn_batches))
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=5e-4)
    attack = PGD(EPS, ALPHA, ITERS, bn_mode="train")
    for epoch in range(epochs):
        for x, y in data:
            train_step(model, Batch(x, y, supplies=supplies), attack, objective, None, optimizer)
            average.update(model, epoch)
        average.end_epoch(model, epoch)
    return model, average.model


def test_kd_swa_equals_a_rendition_of_the_authors_code():
    torch.manual_seed(SEED)
    model, teacher1, teacher2 = Net(), Net(), Net()
    generator = torch.Generator().manual_seed(SEED)
    data = [(torch.rand(16, 3, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(2)]
    bn_batches = [torch.rand(n, 3, 8, 8, generator=generator) for n in (16, 16, 5)]  # the last one partial
    torch.manual_seed(SEED + 1)
    theirs, theirs_swa = their_run(copy.deepcopy(model), teacher1, teacher2, data, bn_batches, epochs=2)
    torch.manual_seed(SEED + 1)  # the attacks' random starts: the same draws in the same order
    ours, ours_swa = wpat_run(copy.deepcopy(model), teacher1, teacher2, data, bn_batches, epochs=2)
    for a, b in ((theirs, ours), (theirs_swa, ours_swa)):
        for (key, t), u in zip(a.state_dict().items(), b.state_dict().values()):
            if t.is_floating_point():
                torch.testing.assert_close(u, t, rtol=1e-4, atol=1e-6, msg=key)
            else:
                assert torch.equal(u, t), key
    assert not ours_swa.training  # the average is evaluated in eval mode after its pass
    # the running statistics are the example-weighted mean of the pass's batch statistics
    with torch.no_grad():
        features = [ours_swa.conv(x) for x in bn_batches]
    mean = sum(f.mean(dim=(0, 2, 3)) * len(f) for f in features) / 37
    torch.testing.assert_close(ours_swa.bn.running_mean, mean, rtol=1e-4, atol=1e-6)


def test_before_its_start_the_swa_is_the_weights_then_an_equal_average_every_n_epochs():
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(4, 3))
    average = StochasticWeightAverage(model, start=2, every=2)
    snapshots = []
    for epoch in range(7):
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
        snapshots.append(model[0].weight.detach().clone())
        average.end_epoch(model, epoch)
        if epoch < 2:
            assert torch.equal(average.model[0].weight, model[0].weight) and average.averaged == 0
        assert average.active(epoch) == (epoch > 2)
    torch.testing.assert_close(average.model[0].weight, (snapshots[2] + snapshots[4] + snapshots[6]) / 3)
    assert average.averaged == 3


# ---------------------------------------------------------------------- through wpat train


def config(tmp_path, name, *overrides):
    return load_config(TINY[0], [*TINY[1:], *overrides, f"run.out_dir={tmp_path}", f"run.name={name}"])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Tiny teachers of the preset, trained as docs/reproduction.md says: an AT run (robust) and
    a natural-training run (standard); and an AT run of another width."""
    from wpat.training.loop import train

    root = tmp_path_factory.mktemp("teachers")
    runs = {"robust": ["objective.name=at", "run.average=ema"],
            "standard": ["objective.name=at", "run.average=ema", "attack.eps=1e-6", "attack.alpha=1e-6",
                         "attack.steps=1"],
            "wider": ["objective.name=at", "run.average=ema", "model.mlp.hidden=24"]}
    for name, overrides in runs.items():
        train(config(root, name, "schedule.epochs=1", *overrides))
    return root


def kd(teachers, standard=None, robust=None):
    return [f"objective.kd.standard_teacher={standard or teachers / 'standard' / 'last.pt'}",
            f"objective.kd.robust_teacher={robust or teachers / 'robust'}"]


def run(tmp_path, *overrides) -> int:
    return main(["train", *TINY, *overrides, f"run.out_dir={tmp_path}", "run.name=r"])


@needs_fmnist
@pytest.mark.parametrize("perturb", ["none", "awp", "rwp"])
def test_kd_swa_trains_from_its_preset_with_teachers_and_a_weight_perturbation(tmp_path, teachers, perturb):
    assert run(tmp_path, *kd(teachers), f"perturb.name={perturb}", "schedule.epochs=2") == 0
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["ema"]["averaged"] == 1 and len(ckpt["teachers"]) == 2  # SWA from the end of epoch 1
    assert ckpt["history"][-1]["perturb_active"] == (perturb != "none")
    # before its start the average was the weights: the same accuracies
    first = ckpt["history"][0]
    assert first["ema_test_nat_acc"] == first["test_nat_acc"]


@needs_fmnist
@pytest.mark.parametrize("case", ["not given", "missing", "empty run directory", "corrupt", "truncated",
                                  "another architecture"])
def test_a_bad_teacher_is_refused_in_one_line_before_training(tmp_path, teachers, capsys, case):
    robust = teachers / "robust" / "last.pt"
    bad = tmp_path / "teacher.pt"
    if case == "empty run directory":
        bad.mkdir()
    elif case == "corrupt":
        bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    elif case == "truncated":
        bad.write_bytes(robust.read_bytes()[:2000])
    elif case == "another architecture":
        bad = teachers / "wider"
    overrides = {"not given": [f"objective.kd.robust_teacher={robust}"],
                 "missing": kd(teachers, robust=tmp_path / "nowhere.pt")}.get(case, kd(teachers, robust=bad))
    out = tmp_path / "out"
    assert main(["train", *TINY, *overrides, f"run.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    key = "standard_teacher" if case == "not given" else "robust_teacher"
    assert len(err.splitlines()) == 1 and f"objective.kd.{key}" in err, err
    assert not out.exists()  # nothing was written: training never started


@needs_fmnist
def test_a_killed_kd_swa_run_resumes_bitwise_and_refuses_changed_teachers(tmp_path, teachers, monkeypatch, capsys):
    import wpat.training.loop as training

    standard = tmp_path / "standard.pt"  # a copy of its own, changed below
    shutil.copy(teachers / "standard" / "last.pt", standard)
    common = [*kd(teachers, standard=standard), "run.checkpoint_every=3", "run.deterministic=true"]
    training.train(config(tmp_path, "whole", *common))
    real = training.train_step
    monkeypatch.setattr(training, "train_step", crashing_at_call(real, 12))  # epoch 3, after its step-3 checkpoint
    with pytest.raises(KeyboardInterrupt):
        training.train(config(tmp_path, "cut", *common))
    monkeypatch.setattr(training, "train_step", real)
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (cut["epoch"], cut["step"], cut["ema"]["averaged"]) == (2, 3, 1)
    saved = (tmp_path / "cut" / "last.pt").read_bytes()
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["ema"]["averaged"] == b["ema"]["averaged"] == 2
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])
    # the teachers are read again on resume: a teacher file whose weights changed is refused
    (tmp_path / "cut" / "last.pt").write_bytes(saved)
    shutil.copy(teachers / "robust" / "last.pt", standard)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 2
    assert "teachers" in capsys.readouterr().err
