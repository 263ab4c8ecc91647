"""Robustness evaluation in the protocol of AWP and RWP Table 2.

- :func:`accuracy` / :func:`correct`: an eval-mode model's accuracy on (attacked) examples.
- :data:`EVAL_ATTACKS`: the columns of Table 2, built from a run's threat model (see
  :func:`build_eval_attack`).
- :func:`evaluate_checkpoint`: a run's ``best.pt`` and ``last.pt`` (or one checkpoint file),
  every attack on the same first N test examples, in fp32 with fixed seeds, plus the
  gradient-masking checks of :mod:`wpat.masking`; :func:`write_report` writes ``eval.json`` and
  ``eval.md``. Foreign checkpoints (e.g. the authors' released state_dicts) are evaluated with the
  model of a config: see :func:`fit_state_dict`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from wpat import __version__
from wpat.attacks import CW, FGSM, PGD, SPSA, AutoAttack, crafting_mode
from wpat.checkpoint import FORMAT, is_wpat_checkpoint, load_checkpoint
from wpat.config import Config, config_from_dict, load_config
from wpat.data import dataset_spec, load_dataset
from wpat.errors import WpatError
from wpat.fs import writable_dir
from wpat.experiment import model_from_config, resolve_device
from wpat.models import MODELS, build_model
from wpat.registry import Registry
from wpat.report import markdown_table, percent

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) to float in [0, 1]; float input is returned as is."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's parameters (``default`` for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device(default))


def attacked_logits(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None,
                    batch_size: int = 500, device: torch.device | str | None = None,
                    desc: str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of ``(logits, labels)`` of eval-mode ``model`` on ``x`` or ``attack``'s examples.

    ``x`` may be uint8 (0..255) or float in [0, 1], on any device; batches go to ``device``
    (default: the model's). Every module's train/eval flag is restored once the batches are
    consumed. ``desc`` shows a progress bar.
    """
    device = device or model_device(model, x.device)
    starts = range(0, len(x), batch_size)
    with crafting_mode(model, "eval"):
        for start in tqdm(starts, desc=desc, disable=None if desc is not None else True, leave=False, dynamic_ncols=True):
            xb = to_unit_float(x[start:start + batch_size].to(device))
            yb = y[start:start + batch_size].to(device)
            if attack is not None:
                xb = attack(model, xb, yb)
            with torch.no_grad():
                logits = model(xb)
            yield logits, yb


def correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None,
            batch_size: int = 500, device: torch.device | str | None = None,
            desc: str | None = None) -> Tensor:
    """Per example, whether ``model`` classifies ``x`` (or ``attack``'s example of it) as ``y``:
    bool flags on ``device`` (default: the model's); see :func:`attacked_logits`."""
    device = device or model_device(model, x.device)
    flags = [logits.argmax(1) == yb for logits, yb in attacked_logits(model, x, y, attack, batch_size, device, desc)]
    return torch.cat(flags) if flags else torch.empty(0, dtype=torch.bool, device=device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None = None,
             batch_size: int = 500, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``(x, y)``, on ``attack``'s examples if given.

    ``x`` may be uint8 (0..255) or float in [0, 1]. The model is evaluated in eval mode (its
    previous mode is restored) and batches are moved to ``device`` (default: the model's).
    """
    if len(x) == 0:
        return float("nan")
    return correct(model, x, y, attack, batch_size, device).sum().item() / len(x)


# ---------------------------------------------------------------------- the attacks of Table 2


@dataclass(frozen=True)
class ThreatModel:
    """``norm`` ("linf" | "l2"), radius ``eps`` and PGD step ``alpha``, pixel units in [0, 1]."""

    norm: str
    eps: float
    alpha: float

    @classmethod
    def from_config(cls, cfg: Config) -> "ThreatModel":
        return cls(cfg.attack.norm, cfg.attack.eps, cfg.eval.alpha or cfg.attack.alpha)


EVAL_ATTACKS = Registry("evaluation attack")
LABELS: dict[str, str] = {}  # name -> column header of Table 2
DEFAULT_ATTACKS = ("natural", "fgsm", "pgd20", "pgd100", "cw")  # spsa and aa are slow


def _column(name: str, label: str) -> Callable:
    LABELS[name] = label
    return EVAL_ATTACKS.register(name)


@_column("natural", "Natural")
def _natural(threat: ThreatModel) -> None:
    return None


@_column("fgsm", "FGSM")
def _fgsm(threat: ThreatModel) -> Attack:
    """One step of size ε from x (for an L2 threat model: along the L2-normalised gradient)."""
    if threat.norm == "linf":
        return FGSM(threat.eps, bn_mode="eval")
    return PGD(threat.eps, threat.eps, 1, norm=threat.norm, random_start=False, bn_mode="eval")


@_column("pgd20", "PGD-20")
def _pgd20(threat: ThreatModel) -> Attack:
    return PGD(threat.eps, threat.alpha, 20, norm=threat.norm, random_start=True, bn_mode="eval")


@_column("pgd100", "PGD-100")
def _pgd100(threat: ThreatModel) -> Attack:
    return PGD(threat.eps, threat.alpha, 100, norm=threat.norm, random_start=True, bn_mode="eval")


@_column("cw", "CW∞")
def _cw(threat: ThreatModel) -> Attack:
    """AWP §5.1: "CW∞ (L∞ version of CW loss optimized by PGD-100)", random start, PGD's step."""
    return CW(threat.eps, threat.alpha, 100, norm=threat.norm, random_start=True, bn_mode="eval")


@_column("spsa", "SPSA")
def _spsa(threat: ThreatModel) -> Attack:
    """AWP §5.1: 100 iterations, δ = 0.001, learning rate 0.01, 256 samples per estimate."""
    return SPSA(threat.eps, 100, delta=0.001, lr=0.01, samples=256, norm=threat.norm)


@_column("aa", "AA")
def _aa(threat: ThreatModel, seed: int = 0, state_dir: Path | None = None) -> Attack:
    """AutoAttack, standard version, through pyautoattack; resumable from ``state_dir``."""
    return AutoAttack(threat.eps, norm=threat.norm, version="standard", seed=seed, state_dir=state_dir)


def build_eval_attack(name: str, threat: ThreatModel, *, seed: int = 0,
                      state_dir: str | Path | None = None) -> Attack | None:
    """The attack of column ``name`` (None for ``natural``); each takes the options it needs."""
    return EVAL_ATTACKS.build_from(name, {"threat": threat, "seed": seed, "state_dir": state_dir})


def check_attack_names(names: Sequence[str]) -> list[str]:
    if not names:
        raise WpatError(f"no attacks given; choose from {', '.join(LABELS)}")
    for name in names:
        EVAL_ATTACKS.get(name)  # a one-line error listing the valid names
    return list(names)


# ---------------------------------------------------------------------- checkpoints


def checkpoints_of(path: str | os.PathLike) -> dict[str, Path]:
    """``best.pt`` and ``last.pt`` of a run directory, or the one checkpoint file given."""
    path = Path(path)
    if path.is_dir():
        found = {kind: path / f"{kind}.pt" for kind in ("best", "last") if (path / f"{kind}.pt").exists()}
        if not found:
            raise WpatError(f"{path}: no best.pt or last.pt (expected a run directory written by "
                            f"`wpat train`, or a checkpoint file)")
        return found
    if not path.exists():
        raise WpatError(f"checkpoint or run directory not found: {path}")
    return {path.stem: path}


def model_from_checkpoint(path: str | os.PathLike, config: str | Config | None = None
                          ) -> tuple[nn.Module, Config, dict[str, Any]]:
    """The model stored in ``path``, its config and ``{"kind", "epoch"}``.

    A wpat checkpoint rebuilds its own config; ``config`` (a preset name, a YAML file or a
    :class:`Config`) replaces it, and is required for a foreign checkpoint, whose state_dict
    (plain, or under "state_dict"/"model") is fitted into the config's model.
    """
    ckpt = load_checkpoint(path)
    if is_wpat_checkpoint(ckpt):
        cfg = _config(config) if config is not None else _stored_config(ckpt, path)
        state, info = ckpt.get("model"), {"kind": ckpt.get("kind"), "epoch": ckpt.get("epoch")}
    elif config is None:
        raise WpatError(f"{path}: not a wpat checkpoint (no format {FORMAT!r}); to evaluate a "
                        f"foreign state_dict, pass --config PRESET_OR_YAML naming its model and dataset")
    else:
        cfg = _config(config)
        state = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), dict)), ckpt)
        info = {"kind": "foreign", "epoch": None}
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise WpatError(f"{path}: no model weights found (expected a state_dict of tensors)")
    model = model_from_config(cfg)
    model.load_state_dict(fit_state_dict(model, state, str(path), cfg))
    return model, cfg, info


def _config(config: str | Config) -> Config:
    return config if isinstance(config, Config) else load_config(str(config))


def _stored_config(ckpt: dict[str, Any], path: str | os.PathLike) -> Config:
    try:
        return config_from_dict(ckpt["config"])
    except WpatError as err:
        raise WpatError(f"{path}: stored config: {err}") from None
    except (KeyError, TypeError, AttributeError):
        raise WpatError(f"{path}: the checkpoint's stored config is missing or malformed") from None


def _strip(key: str) -> str:
    """Drop the prefixes of DataParallel ("module.") and torch.compile ("_orig_mod.")."""
    while key.startswith(("module.", "_orig_mod.")):
        key = key.split(".", 1)[1]
    return key


def _weights(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The entries that define the network: no normalization buffers, no BN batch counters."""
    return {k: v for k, v in state.items()
            if not k.startswith("normalize.") and not k.endswith("num_batches_tracked")}


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], where: str, cfg: Config) -> dict[str, Tensor]:
    """``state`` as a full state_dict of ``model`` (a wpat ``Sequential(normalize, net)``).

    Its keys may carry "module." / "_orig_mod." prefixes and may lack wpat's "net." prefix. If
    the names then differ (another code base's layer names) but every tensor's shape matches
    in order, the tensors are taken in order. Normalization buffers it lacks (the authors'
    models normalize outside the network) are the config's dataset mean/std; a
    num_batches_tracked it lacks does not matter in eval mode. Anything else is one
    :class:`WpatError` naming both sides.
    """
    own = model.state_dict()
    theirs = {_strip(k): v for k, v in state.items()}
    if not any(k.startswith(("net.", "normalize.")) for k in theirs):
        theirs = {f"net.{k}": v for k, v in theirs.items()}
    own_w, their_w = _weights(own), _weights(theirs)
    own_shapes, their_shapes = [v.shape for v in own_w.values()], [v.shape for v in their_w.values()]
    if own_w.keys() == their_w.keys() and all(own_w[k].shape == v.shape for k, v in their_w.items()):
        fitted = {**own, **their_w}
    elif own_shapes == their_shapes:
        fitted = {**own, **dict(zip(own_w, their_w.values()))}
    else:
        classes, arch = _describe(their_w)
        spec = dataset_spec(cfg.data.name)
        raise WpatError(
            f"{where}: checkpoint has {classes} output classes and the layout of {arch} "
            f"({len(their_w)} weight tensors) but the config builds {cfg.model.name} for "
            f"{cfg.data.name} ({spec.num_classes} classes, {len(own_w)} weight tensors); "
            f"pass a --config whose model and dataset match")
    for key in ("normalize.mean", "normalize.std"):
        if key in theirs and theirs[key].shape == own[key].shape:
            fitted[key] = theirs[key]
    return fitted


def _describe(weights: dict[str, Tensor]) -> tuple[Any, str]:
    """(output classes, the wpat architectures with this layout, or "an unknown network").

    An architecture matches by shapes, or else by key names alone (another width or class
    count of the same network)."""
    matrices = [v for v in weights.values() if v.dim() == 2]
    convs = [v for v in weights.values() if v.dim() == 4]
    if not matrices or not convs:
        return "an unknown number of", "an unknown network"
    classes, in_channels = matrices[-1].shape[0], convs[0].shape[1]
    by_shape, by_name = [], []
    for name in MODELS.names():
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                candidate = _weights(build_model(name, num_classes=classes, in_channels=in_channels,
                                                 mean=[0.0] * in_channels, std=[1.0] * in_channels).state_dict())
        except WpatError:
            continue
        if [v.shape for v in candidate.values()] == [v.shape for v in weights.values()]:
            by_shape.append(name)
        elif list(candidate) == list(weights):
            by_name.append(name)
    found = by_shape or by_name
    return classes, "/".join(found) if found else "an unknown network"


# ---------------------------------------------------------------------- evaluation


def first_test_examples(cfg: Config, n: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples (0: all) of the config's test set, uint8, fixed for every attack."""
    x, y = load_dataset(cfg.data.name, "test", root=cfg.data.root, download=cfg.data.download)
    return (x[:n], y[:n]) if n > 0 else (x, y)


def evaluate_model(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel,
                   attacks: Sequence[str] = DEFAULT_ATTACKS, *, batch_size: int = 500, seed: int = 0,
                   state_dir: str | Path | None = None, checks: bool = True,
                   progress: str | None = None) -> dict[str, Any]:
    """Accuracy of ``model`` under each attack of :data:`EVAL_ATTACKS` on the same ``(x, y)``.

    ``x`` is uint8 or float in [0, 1]; the model stays on its device and in its dtype (use
    fp32). Returns ``{"accuracy": {name: float}, "seconds": {name: float}}`` and, with
    ``checks``, ``"checks"``: :func:`wpat.masking.masking_checks`. ``progress`` prefixes the
    progress bars (None: no bars).
    """
    from wpat.masking import masking_checks  # masking builds on accuracy() above

    device = model_device(model, x.device)
    x, y = to_unit_float(x.to(device)), y.to(device)
    result: dict[str, Any] = {"accuracy": {}, "seconds": {}}
    for name in check_attack_names(attacks):
        attack = build_eval_attack(name, threat, seed=seed, state_dir=state_dir)
        torch.manual_seed(seed)  # an attack's randomness does not depend on which ran before it
        started = time.perf_counter()
        flags = correct(model, x, y, attack, batch_size, desc=f"{progress} {LABELS[name]}" if progress else None)
        result["accuracy"][name] = flags.sum().item() / len(x)
        result["seconds"][name] = round(time.perf_counter() - started, 3)
    if checks:
        torch.manual_seed(seed)
        started = time.perf_counter()
        result["checks"] = masking_checks(model, x, y, result["accuracy"], threat.norm, batch_size, LABELS)
        result["seconds"]["checks"] = round(time.perf_counter() - started, 3)
    return result


def evaluate_checkpoint(path: str | os.PathLike, attacks: Sequence[str] = DEFAULT_ATTACKS, *,
                        n_examples: int = 0, batch_size: int = 500, device: str = "auto",
                        seed: int = 0, config: str | Config | None = None,
                        out_dir: str | os.PathLike | None = None, checks: bool = True,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a run directory's best and last checkpoints, or one checkpoint file.

    Every checkpoint is attacked on the first ``n_examples`` (0: all) test examples of its
    dataset, in fp32 and eval mode, each attack seeded with ``seed``. ``config`` is required
    for a foreign checkpoint (see :func:`model_from_checkpoint`); ``out_dir`` (created) keeps
    AutoAttack's finished batches for resuming (``out_dir/autoattack/<checkpoint>``). Returns the report
    that :func:`write_report` writes: settings plus ``"checkpoints": {label: result}``.
    """
    attacks = check_attack_names(attacks)
    if n_examples < 0 or batch_size < 1:
        raise WpatError(f"--n-examples must be >= 0 (0 = all) and --batch-size >= 1, "
                        f"got {n_examples} and {batch_size}")
    started = time.perf_counter()
    device_ = resolve_device(device)
    report: dict[str, Any] = {"target": str(path), "wpat_version": __version__, "attacks": attacks,
                              "labels": {n: LABELS[n] for n in attacks}, "seed": seed,
                              "device": str(device_), "checkpoints": {}}
    # Every checkpoint and test set is read before any folder is made or any attack runs, so a
    # bad last.pt or a missing dataset is reported at once, not after hours spent on best.pt.
    loaded = {label: (p, *model_from_checkpoint(p, config)) for label, p in checkpoints_of(path).items()}
    test_sets = {}
    for _, _, cfg, _ in loaded.values():
        if (cfg.data.name, cfg.data.root) not in test_sets:
            test_sets[cfg.data.name, cfg.data.root] = first_test_examples(cfg, n_examples)
    if out_dir is not None:
        prepare_out_dir(out_dir)
    evaluated: list[tuple[nn.Module, Config, dict[str, Any]]] = []
    for label, (ckpt_path, model, cfg, info) in loaded.items():
        model = model.to(device_).float().eval()
        x, y = test_sets[cfg.data.name, cfg.data.root]
        threat = ThreatModel.from_config(cfg)
        # best.pt and last.pt hold the same weights when the last epoch was the best: attack once
        result = next((r for m, c, r in evaluated if c == cfg and same_weights(m, model)), None)
        if result is None:
            state_dir = Path(out_dir) / "autoattack" / label if out_dir is not None else None
            result = evaluate_model(model, x, y, threat, attacks, batch_size=batch_size, seed=seed,
                                    state_dir=state_dir, checks=checks, progress=label if progress else None)
            evaluated.append((model, cfg, result))
        report["checkpoints"][label] = {"path": str(ckpt_path), **info, "model": cfg.model.name,
                                        "dataset": cfg.data.name, "n_examples": len(x),
                                        "threat_model": asdict(threat), **result}
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------- reports


def default_out_dir(path: str | os.PathLike) -> Path:
    """A run directory itself; ``eval-<name>/`` beside a single checkpoint file."""
    path = Path(path)
    return path if path.is_dir() else path.parent / f"eval-{path.stem}"


def results_table(report: Mapping[str, Any]) -> str:
    """Table 2's layout: a row per checkpoint, a column per attack, accuracy in %."""
    names = report["attacks"]
    rows = [[label, "-" if r.get("epoch") is None else r["epoch"],
             *(percent(r["accuracy"].get(n)) for n in names)]
            for label, r in report["checkpoints"].items()]
    return markdown_table(["Checkpoint", "Epoch", *(LABELS[n] for n in names)], rows)


def report_warnings(report: Mapping[str, Any]) -> list[str]:
    return [f"{label}: {w}" for label, r in report["checkpoints"].items()
            for w in r.get("checks", {}).get("warnings", [])]


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` and check that it is writable, before hours of attacks are spent."""
    return writable_dir(out_dir, "--out")


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``eval.json`` (everything) and ``eval.md`` (the table, settings, warnings)."""
    out = prepare_out_dir(out_dir)
    json_path, md_path = out / "eval.json", out / "eval.md"
    try:
        _write_atomic(json_path, json.dumps(report, indent=2) + "\n")
        _write_atomic(md_path, _markdown(report))
    except OSError as err:
        raise WpatError(f"{out}: cannot write the evaluation there ({err.strerror})") from None
    return json_path, md_path


def _markdown(report: Mapping[str, Any]) -> str:
    first = next(iter(report["checkpoints"].values()))
    t = first["threat_model"]
    checks = [f"- {label}: PGD-20 at eps={r['checks']['large_eps']['eps']:.3g} leaves "
              f"{percent(r['checks']['large_eps']['accuracy'])}%; zero input gradients on "
              f"{percent(r['checks']['zero_gradient_fraction'])}% of the examples"
              for label, r in report["checkpoints"].items() if "checks" in r]
    warnings = [f"- warning: {w}" for w in report_warnings(report)] or ["- no warnings"]
    return "\n".join([
        f"# Robustness of {report['target']}", "",
        f"Test accuracy (%) on the first {first['n_examples']} test examples of {first['dataset']}, "
        f"{t['norm']} threat model, eps = {t['eps']:.4g}, PGD step {t['alpha']:.4g}; "
        f"seed {report['seed']}, {report['device']}, fp32, eval mode.", "",
        results_table(report), "",
        *(["## Gradient-masking checks", "", *checks, *warnings, ""] if checks else []),
    ])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
