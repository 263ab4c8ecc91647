"""Behaviour users rely on from the robustness evaluation: on a model adversarially trained for a
few seconds on real Fashion-MNIST, stronger attacks leave less accuracy; SPSA is batched, never
raises accuracy and uses no autograd; AutoAttack runs through pyautoattack on a wpat model as is
and resumes; the gradient-masking checks fire on masked models; foreign state_dicts load."""

import copy
import logging
import math
import re

import pyautoattack
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, fashion_mnist_available
from wpat.training import experiment
from wpat.attacks import SPSA, AutoAttack
from wpat.checkpoints.files import FORMAT, save_atomic
from wpat.configuration.config import dump_config, load_config
from wpat.data import load_dataset
from wpat.helpers.errors import WpatError
from wpat.evaluation import (COLUMNS, column_correct, evaluate_checkpoint, evaluate_model, labels,
                             masking_checks, ordering_warnings, report_warnings, results_table)
from wpat.training.loading import fit_state_dict, model_from_checkpoint
from wpat.measurements.metrics import accuracy
from wpat.models import build_model
from wpat.helpers.threat import ThreatModel

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

EPS = 0.1
N_EVAL = 64
CONFIG = ["model.small_cnn.width=8", "attack.steps=3", "attack.alpha=0.04"]


def write_checkpoint(model, cfg, path, kind, epoch):
    """A checkpoint in the format `wpat train` writes (best.pt omits optimizer and RNG)."""
    save_atomic({"format": FORMAT, "kind": kind, "config": cfg.to_dict(), "model_name": cfg.model.name,
                 "dataset": cfg.data.name, "model": model.state_dict(), "epoch": epoch,
                 "best": {"metric": 0.0, "epoch": 1}, "history": []}, path)


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A run directory: small CNN, PGD-3 AT on 1200 training images; best.pt after epoch 1,
    last.pt after epoch 2 (about 10 s on one core)."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config(None, CONFIG)
    torch.manual_seed(SEED)
    model = experiment.model_from_config(cfg)
    x, y = load_dataset("fashion_mnist", "train")
    x, y = x[:1200].float() / 255, y[:1200]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    attack = experiment.train_attack(cfg, experiment.objective_from_config(cfg))
    for epoch in (1, 2):
        for i in range(0, len(x), 64):
            x_adv = attack(model, x[i:i + 64], y[i:i + 64])
            model.train()
            optimizer.zero_grad()
            F.cross_entropy(model(x_adv), y[i:i + 64]).backward()
            optimizer.step()
        kind = "best" if epoch == 1 else "last"
        write_checkpoint(model, cfg, run_dir / f"{kind}.pt", kind, epoch)
    dump_config(cfg, run_dir / "config.yaml")
    return run_dir


@pytest.fixture(scope="session")
def last(run):
    """The last checkpoint's eval-mode model and the first N_EVAL test examples in [0, 1]."""
    model, cfg, _ = model_from_checkpoint(run / "last.pt")
    x, y = load_dataset("fashion_mnist", "test")
    return model.eval(), x[:N_EVAL].float() / 255, y[:N_EVAL]


def test_stronger_attacks_leave_less_accuracy(run):
    report = evaluate_checkpoint(run, ["natural", "fgsm", "pgd20", "pgd100"], n_examples=N_EVAL,
                                 checks=False, progress=False)
    assert list(report["checkpoints"]) == ["best", "last"]
    for result in report["checkpoints"].values():
        acc = result["accuracy"]
        assert all(s["n_examples"] == N_EVAL for s in result["settings"].values())
        # Stronger attacks leave less, up to the sampling noise the library's own masking check
        # allows (restarts and step counts differ, so a borderline example may flip either way).
        assert ordering_warnings(acc, N_EVAL) == []
        assert acc["pgd20"] < acc["natural"] and acc["pgd100"] < acc["natural"]
    last = report["checkpoints"]["last"]
    assert last["epoch"] == 2 and last["accuracy"]["natural"] > 0.4  # it did learn (chance: 0.1)
    assert last["accuracy"]["pgd20"] < last["accuracy"]["natural"]


def test_evaluation_is_reproducible_and_independent_of_the_other_attacks(run):
    one = evaluate_checkpoint(run / "best.pt", ["pgd20"], n_examples=32, checks=False, progress=False)
    two = evaluate_checkpoint(run / "best.pt", ["natural", "fgsm", "pgd20"], n_examples=32,
                              checks=False, progress=False)
    assert one["checkpoints"]["best"]["accuracy"]["pgd20"] == two["checkpoints"]["best"]["accuracy"]["pgd20"]


def test_table_has_the_papers_columns(run):
    report = evaluate_checkpoint(run / "last.pt", ["natural", "fgsm"], n_examples=16, checks=False, progress=False)
    header, rule, row = results_table(report).splitlines()
    assert [c.strip() for c in header.strip("|").split("|")] == ["Checkpoint", "Epoch", "Natural", "FGSM"]
    assert row.startswith("| last") and f"{100 * report['checkpoints']['last']['accuracy']['natural']:.2f}" in row
    assert labels() == {"natural": "Natural", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd100": "PGD-100",
                        "cw": "CW∞", "spsa": "SPSA", "aa": "AA", "aa-plus": "AA+",
                        "aa-apgd": "AA (APGD-CE, APGD-T)"}


def test_every_column_has_a_label_and_a_docstring_of_its_own():
    docs = {}
    for name in COLUMNS:
        assert COLUMNS.info(name)["label"].strip(), name
        doc = (COLUMNS.get(name).__doc__ or "").strip()
        assert doc, f"{name} has no docstring"
        docs[name] = doc
    assert len(set(docs.values())) == len(docs), docs  # none shares another's (e.g. PGD-20/100)


# ---------------------------------------------------------------------- SPSA


class Recording(nn.Module):
    """Records the batch size of every forward and whether autograd was on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches, self.grad_enabled = net, [], set()

    def forward(self, x):
        self.batches.append(len(x))
        self.grad_enabled.add(torch.is_grad_enabled())
        return self.net(x)


def test_spsa_is_batched_gradient_free_and_never_raises_accuracy(last):
    model, x, y = last
    recorded = Recording(model)
    spsa = SPSA(EPS, 4, samples=32, max_batch=200)
    x_adv = spsa(recorded, x, y)
    assert recorded.grad_enabled == {False}
    per_step = math.ceil(N_EVAL * 32 / 200) + 1  # full chunks of (example, sample) pairs + the check
    assert max(recorded.batches) == 200 and len(recorded.batches) <= 1 + 4 * per_step
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert accuracy(model, x_adv, y) <= accuracy(model, x, y)


def test_spsa_breaks_a_linear_model_like_a_gradient_attack():
    torch.manual_seed(0)
    w = torch.randn(2, 16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
    model[1].weight.data = w
    x = torch.rand(200, 1, 4, 4)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    # The best L∞ attack moves every pixel by ε along sign(w_other − w_y): the margin
    # z_y − z_other drops by up to ε‖w_0 − w_1‖₁ (less where the [0, 1] box stops a pixel).
    margin = (logits[:, 0] - logits[:, 1]).abs()
    breakable = margin < 0.8 * EPS * (w[0] - w[1]).abs().sum()
    x_adv = SPSA(EPS, 30, samples=64)(model, x, y)
    broken = model(x_adv).argmax(1) != y
    assert breakable.sum() >= 20 and broken[breakable].float().mean() > 0.9


def test_l2_threat_model_is_respected_by_spsa_and_autoattack(last):
    model, x, y = last
    eps = 1.0
    for attack in (SPSA(eps, 3, samples=8, norm="l2"), AutoAttack(eps, norm="l2", attacks=["apgd-ce"])):
        x_adv = attack(model, x[:8], y[:8])
        assert (x_adv - x[:8]).flatten(1).norm(dim=1).max() <= eps + 1e-4
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_spsa_rejects_bad_arguments():
    with pytest.raises(WpatError, match="samples"):
        SPSA(EPS, samples=3)
    with pytest.raises(WpatError, match="eps"):
        SPSA(0.0)


# ---------------------------------------------------------------------- AutoAttack


def test_pyautoattack_accepts_a_wpat_model_as_is(last):
    model, x, y = last
    adversary = pyautoattack.AutoAttack(model, attacks=["apgd-ce"], version="custom", eps=EPS,
                                        norm="Linf", seed=0, device="cpu")
    x_adv, y_adv = adversary.run_standard_evaluation(x[:8], y[:8], batch_size=8)
    assert (x_adv - x[:8]).abs().max() <= EPS + 1e-6
    assert accuracy(model, x_adv, y[:8]) <= accuracy(model, x[:8], y[:8])


def test_autoattack_wrapper_resumes_from_its_state_dir(last, tmp_path, monkeypatch):
    model, x, y = last
    attack = AutoAttack(EPS, attacks=["apgd-ce"], state_dir=tmp_path)
    x_adv = attack(model, x[:8], y[:8])
    assert accuracy(model, x_adv, y[:8]) <= accuracy(model, x[:8], y[:8])
    assert len(list(tmp_path.glob("autoattack-*.pt"))) == 1

    def no_attack(*args, **kwargs):
        raise AssertionError("a finished call must not be attacked again")

    monkeypatch.setattr(pyautoattack, "AutoAttack", no_attack)
    assert torch.equal(AutoAttack(EPS, attacks=["apgd-ce"], state_dir=tmp_path)(model, x[:8], y[:8]), x_adv)
    other = copy.deepcopy(model)
    other.net.classifier[-1].bias.data += 1.0  # other weights: not the stored result
    with pytest.raises(AssertionError, match="must not be attacked"):
        AutoAttack(EPS, attacks=["apgd-ce"], state_dir=tmp_path)(other, x[:8], y[:8])


def test_autoattack_shows_its_lines_per_batch_and_the_running_robust_accuracy(last, capsys):
    model, x, y = last
    logger = logging.getLogger("auto-attack")
    before = (list(logger.handlers), logger.level, logger.propagate)
    flags = column_correct(model, x[:16], y[:16], AutoAttack(EPS, attacks=["apgd-ce"]), batch_size=8,
                           desc="last AA")
    err = capsys.readouterr().err
    for batch in (1, 2):  # AutoAttack's own verbose lines, under the batch they belong to
        assert re.search(rf"^last AA batch {batch}/2: initial accuracy: [\d.]+%$", err, re.M), err
        assert re.search(rf"^last AA batch {batch}/2: robust accuracy: [\d.]+%$", err, re.M), err
    for done in (8, 16):  # after every batch, the robust accuracy so far
        robust = int(flags[:done].sum())
        assert re.search(rf"^last AA: {done}/16 img .*, robust accuracy so far "
                         rf"{100 * robust / done:.2f}% \({robust}/{done}\)$", err, re.M), err
    assert (list(logger.handlers), logger.level, logger.propagate) == before  # pyautoattack's logger as it was


def test_autoattack_rejects_unknown_settings():
    with pytest.raises(WpatError, match="apgd-ce"):
        AutoAttack(EPS, attacks=["pgd"])
    with pytest.raises(WpatError, match="norm"):
        AutoAttack(EPS, norm="l1")


@pytest.mark.slow
def test_standard_autoattack_is_at_least_as_strong_as_pgd20(run, tmp_path):
    report = evaluate_checkpoint(run / "last.pt", ["natural", "pgd20", "aa"], n_examples=8,
                                 out_dir=tmp_path, progress=False)
    acc = report["checkpoints"]["last"]["accuracy"]
    assert acc["aa"] <= acc["pgd20"] and acc["aa"] <= acc["natural"]
    assert report["checkpoints"]["last"]["checks"]["warnings"] == []


# ---------------------------------------------------------------------- gradient-masking checks


def test_ordering_warnings_allow_sampling_noise_only():
    assert ordering_warnings({"natural": 0.80, "fgsm": 0.50, "pgd20": 0.51}, n=1000) == []
    found = ordering_warnings({"natural": 0.80, "fgsm": 0.50, "pgd20": 0.60}, n=1000, labels=labels())
    assert len(found) == 1 and "PGD-20" in found[0] and "FGSM" in found[0]


def _report(accuracy, n, seed=0):
    """A report as `wpat eval` makes it: one checkpoint, ``accuracy`` on the first ``n`` examples."""
    from wpat.evaluation import column_settings

    threat = ThreatModel("linf", EPS, 0.01)
    settings = {a: {"dataset": "fashion_mnist", "n_examples": n,
                    **column_settings(a, threat, seed=seed, batch_size=500)} for a in accuracy}
    entry = {"kind": "last", "epoch": 2, "model": "small_cnn", "dataset": "fashion_mnist",
             "weights": "sha256:0123456789abcdef", "accuracy": accuracy,
             "seconds": {a: 1.0 for a in accuracy}, "settings": settings,
             "measured": {a: {"device": "cpu", "wpat_version": "0", "date": None} for a in accuracy}}
    return {"format": "wpat-eval-v2", "target": "run", "attacks": list(accuracy),
            "labels": labels(list(accuracy)), "checkpoints": {"last": entry}}


def test_the_ordering_check_spans_evaluations_on_the_same_examples():
    from wpat.evaluation import merge_reports

    earlier = _report({"natural": 0.80, "pgd20": 0.40}, n=1000)
    merged = merge_reports(earlier, _report({"aa": 0.55}, n=1000, seed=1))  # AA run later, another seed
    found = merged["checkpoints"]["last"]["ordering_warnings"]
    assert len(found) == 1 and "AA accuracy 55.00% exceeds PGD-20 accuracy 40.00%" in found[0]
    assert report_warnings(merged) == [f"last: {found[0]}"]
    # on other examples the numbers are not comparable: no warning
    other = merge_reports(earlier, _report({"aa": 0.55}, n=200))
    assert other["checkpoints"]["last"]["ordering_warnings"] == []


class Constant(nn.Module):
    """Ignores its input: zero input gradients, and no attack changes its prediction."""

    def forward(self, x):
        return torch.tensor([5.0, 0.0]).expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 2)

    def forward(self, x):
        return self.linear(x.flatten(1)) + 0.1 * torch.randn(len(x), 2)


def test_masking_checks_flag_a_model_attacks_cannot_move():
    x, y = torch.rand(20, 1, 4, 4), torch.zeros(20, dtype=torch.long)
    checks = masking_checks(Constant(), x, y, {"natural": 1.0}, "linf")
    assert checks["zero_gradient_fraction"] == 1.0 and checks["large_eps"]["accuracy"] == 1.0
    text = " ".join(checks["warnings"])
    assert "zero gradient" in text and "eps=0.5" in text and not checks["randomized"]


def test_masking_checks_flag_randomness_and_pass_a_trained_model(last):
    x, y = torch.rand(20, 1, 4, 4), torch.zeros(20, dtype=torch.long)
    assert masking_checks(Noisy(), x, y, {}, "linf")["randomized"]
    model, x, y = last
    result = evaluate_model(model, x[:32], y[:32], ThreatModel("linf", EPS, 0.04), ["natural", "fgsm"])
    assert result["checks"]["warnings"] == [] and result["checks"]["large_eps"]["accuracy"] < 0.05


# ---------------------------------------------------------------------- foreign checkpoints


def test_foreign_state_dict_with_other_names_and_prefixes_loads(run, tmp_path):
    model, cfg, _ = model_from_checkpoint(run / "last.pt")
    # The authors' convention: DataParallel's "module." prefix, the bare network, own layer names.
    foreign = {f"module.layer{i}.{key.rsplit('.', 1)[1]}": v
               for i, (key, v) in enumerate(model.net.state_dict().items())}
    torch.save(foreign, tmp_path / "authors.pt")
    config = tmp_path / "fmnist.yaml"
    dump_config(cfg, config)
    loaded, _, info = model_from_checkpoint(tmp_path / "authors.pt", config=str(config))
    x = torch.rand(4, 1, 28, 28)
    assert info["kind"] == "foreign"
    assert torch.equal(loaded.eval()(x), model.eval()(x))  # normalization filled from the config


def test_mismatch_names_both_architectures():
    cfg = load_config(None, CONFIG)
    model = experiment.model_from_config(cfg)
    theirs = build_model("preact_resnet18", num_classes=100, mean=[0.5] * 3, std=[0.25] * 3).net.state_dict()
    with pytest.raises(WpatError) as err:
        fit_state_dict(model, theirs, "authors.pt", cfg)
    message = str(err.value)
    assert "100 output classes" in message and "preact_resnet18" in message
    assert "small_cnn for fashion_mnist" in message and "\n" not in message


def test_two_autoattack_versions_each_show_their_version_and_the_shared_package():
    """AA standard and aa-apgd on the same checkpoint: the version differs by column, the package
    is shared; neither may read "not recorded"."""
    from wpat.evaluation.report import settings_lines

    def settings(version):
        return {"dataset": "fashion_mnist", "n_examples": 1000, "norm": "linf", "eps": 0.1, "step": 0.0125,
                "seed": 0, "batch_size": 500, "autoattack": version, "pyautoattack": "0.2.0"}

    entry = {"kind": "best", "epoch": 40, "accuracy": {"aa": 0.479, "aa-apgd": 0.48},
             "settings": {"aa": settings("standard"), "aa-apgd": settings("apgd-ce+apgd-t")}}
    report = {"attacks": ["aa-apgd", "aa"], "labels": {}, "checkpoints": {"best": entry}}
    text = "\n".join(settings_lines(report))
    assert "not recorded" not in text
    assert "pyautoattack 0.2.0" in text and "AutoAttack standard" in text and "AutoAttack apgd-ce+apgd-t" in text
