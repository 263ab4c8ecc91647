"""The values of a configuration: parsing (``8/255``, ``inf``, YAML scalars), setting a
``section.key`` or ``section.component.option`` entry on a config tree, and checking the values
this layer owns. It works on any config tree (``wpat.config.Config``) handed to it and imports
no component.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from wpat.errors import WpatError
from wpat.threat import BNMode, Norm


# --------------------------------------------------------------------------- parsing values


def parse_number(text: str) -> float:
    """Parse ``0.03``, ``8/255``, ``1e-3``, ``inf``; raise ValueError otherwise."""
    text = text.strip()
    if "/" in text:
        return float(Fraction(text))
    return float(text)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    if get_origin(annotation) is Union:
        options = [a for a in get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(value, options[0], key)
    expected = annotation if isinstance(annotation, type) else type(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            number = parse_number(str(value))
            if not number.is_integer():
                raise ValueError
            return int(number)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return parse_number(str(value))
        if annotation is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if annotation is list or get_origin(annotation) is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError
            return [parse_number(str(v)) for v in value]
    except (ValueError, ZeroDivisionError, OverflowError, TypeError, yaml.YAMLError):
        pass
    name = getattr(expected, "__name__", str(expected))
    raise WpatError(f"{key}: {value!r} is not a valid {name}")


def parse_value(value: Any) -> Any:
    """A component option's value: YAML scalars and lists, plus ``8/255`` and ``inf``."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    if isinstance(value, str):
        try:
            return parse_number(value)
        except (ValueError, ZeroDivisionError):
            return value
    if isinstance(value, list):
        return [parse_value(v) for v in value]
    return value


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set ``section.key`` (a typed field) or ``section.component.option`` (a component option)."""
    parts = key.split(".")
    sections = [f.name for f in dataclasses.fields(cfg)]
    if len(parts) not in (2, 3) or parts[0] not in sections:
        raise WpatError(f"unknown config key {key!r}; sections: {', '.join(sections)} (use section.key=value)")
    section = getattr(cfg, parts[0])
    hints = {k: v for k, v in get_type_hints(type(section)).items() if k != "options"}
    has_options = hasattr(section, "options")
    if len(parts) == 3 and has_options:
        section.options.setdefault(parts[1], {})[parts[2]] = parse_value(value)
        return
    if len(parts) == 2 and parts[1] in hints:
        setattr(section, parts[1], _coerce(value, hints[parts[1]], key))
        return
    where = (f"valid keys in {parts[0]}: {', '.join(hints)}"
             + (f"; options of a {parts[0]} go in {parts[0]}.<{parts[0]} name>.<option>" if has_options else ""))
    raise WpatError(f"unknown config key {key!r}; {where}")


def flatten(tree: Any, where: str) -> dict[str, Any]:
    """``{section: {key: value, component: {option: value}}}`` as ``section.key`` and
    ``section.component.option`` entries."""
    if not isinstance(tree, dict):
        raise WpatError(f"{where}: expected a mapping of sections (data:, model:, ...), got {type(tree).__name__}")
    flat = {}
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise WpatError(f"{where}: section {section!r} must be a mapping of key: value")
        for k, v in values.items():
            if isinstance(v, dict):
                flat.update({f"{section}.{k}.{option}": x for option, x in v.items()})
            else:
                flat[f"{section}.{k}"] = v
    return flat


# --------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise WpatError(f"{key}: {value!r} is invalid; expected {allowed}")


def _choice(key: str, value: Any, choices: list) -> None:
    _check(value in choices, key, value, f"one of {', '.join(map(str, choices))}")


def _finite(x: float) -> bool:
    return math.isfinite(x)


def validate(cfg: Any) -> None:
    """Check every value this layer owns. Component names and options are checked where the
    components are built (``wpat.experiment.build_components``), by their own registries."""
    d, m, a, e, p, s, r = cfg.data, cfg.model, cfg.attack, cfg.eval, cfg.perturb, cfg.schedule, cfg.run
    for key, value in (("data.name", d.name), ("model.name", m.name), ("objective.name", cfg.objective.name),
                       ("perturb.name", p.name), ("schedule.name", s.name)):
        _check(bool(value), key, value, "a name")
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer ≥ 1")
    for key in ("train_subset", "test_subset", "val_size"):
        _check(getattr(d, key) >= 0, f"data.{key}", getattr(d, key), "an integer ≥ 0 (0 = all / none)")
    _choice("data.padding", d.padding, ["zeros", "reflect"])
    _check(_finite(d.extra_fraction) and 0 <= d.extra_fraction < 1, "data.extra_fraction", d.extra_fraction,
           "a fraction in [0, 1) of each batch")
    _check(_finite(d.extra_weight) and d.extra_weight >= 0, "data.extra_weight", d.extra_weight, "a number ≥ 0")
    _check(d.cutout >= 0, "data.cutout", d.cutout, "a patch length ≥ 0 (pixels; 0 = off)")
    _choice("data.mix", d.mix, ["none", "mixup", "cutmix"])
    _check(_finite(d.mix_alpha) and d.mix_alpha > 0, "data.mix_alpha", d.mix_alpha, "a number > 0")
    if d.classes is not None:
        _check(all(float(c).is_integer() and c >= 0 for c in d.classes) and len(set(d.classes)) == len(d.classes)
               and len(d.classes) >= 2, "data.classes", d.classes, "a list of at least 2 distinct class numbers")
    _check(_finite(d.rotation) and 0 <= d.rotation <= 180, "data.rotation", d.rotation, "degrees in [0, 180]")
    if (m.mean is None) != (m.std is None):
        raise WpatError("model.mean and model.std: give both (per-channel lists) or neither (the dataset's)")
    if m.std is not None:
        _check(len(m.mean) == len(m.std) and all(x > 0 for x in m.std), "model.std", m.std,
               "positive numbers, one per channel like model.mean")
    Norm.parse(a.norm, "attack.norm")
    _check(_finite(a.eps) and a.eps > 0, "attack.eps", a.eps, "a number > 0 (pixel units, e.g. 8/255)")
    _check(_finite(a.alpha) and a.alpha > 0, "attack.alpha", a.alpha, "a number > 0 (pixel units, e.g. 2/255)")
    _check(a.steps >= 1, "attack.steps", a.steps, "an integer ≥ 1")
    if a.bn_mode is not None:
        BNMode.parse(a.bn_mode, "attack.bn_mode")
    _check(e.steps >= 1, "eval.steps", e.steps, "an integer ≥ 1")
    if e.alpha is not None:
        _check(_finite(e.alpha) and e.alpha > 0, "eval.alpha", e.alpha, "a number > 0")
    _check(e.n_train >= 0, "eval.n_train", e.n_train, "an integer ≥ 0")
    _check(e.batch_size >= 1, "eval.batch_size", e.batch_size, "an integer ≥ 1")
    _check(e.every >= 1, "eval.every", e.every, "an integer ≥ 1")
    _check(p.warmup >= 0, "perturb.warmup", p.warmup, "an integer ≥ 0 (epochs)")
    _check(p.alternations >= 1, "perturb.alternations", p.alternations, "an integer ≥ 1")
    o = cfg.optim
    _check(_finite(o.lr) and o.lr > 0, "optim.lr", o.lr, "a number > 0")
    _check(_finite(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", o.momentum, "a number in [0, 1)")
    _check(_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number ≥ 0")
    _check(_finite(o.l1) and o.l1 >= 0, "optim.l1", o.l1, "a number ≥ 0 (0 = off)")
    _check(_finite(o.l2) and o.l2 >= 0, "optim.l2", o.l2, "a number ≥ 0 (0 = off)")
    if o.nesterov:
        _check(o.momentum > 0, "optim.nesterov", o.nesterov, "false unless optim.momentum > 0 (Nesterov "
               "momentum needs momentum)")
    _check(s.epochs >= 1, "schedule.epochs", s.epochs, "an integer ≥ 1")
    _choice("schedule.first_epoch", s.first_epoch, [0, 1])
    _choice("schedule.update", s.update, ["step_start", "step_end", "epoch"])
    _check(r.seed >= 0, "run.seed", r.seed, "an integer ≥ 0")
    _check(r.threads >= 0, "run.threads", r.threads, "an integer ≥ 0 (0 = torch's default)")
    _check(r.checkpoint_every >= 0, "run.checkpoint_every", r.checkpoint_every, "an integer ≥ 0 (steps; 0 = epoch ends)")
    _check(r.keep_every >= 0, "run.keep_every", r.keep_every, "an integer ≥ 0 (epochs; 0 = none)")
    _choice("run.select", r.select, ["test", "val"])
    _check(r.ema == 0 or (_finite(r.ema) and 0 < r.ema < 1), "run.ema", r.ema, "a decay in (0, 1), or 0 for off")
    _check(r.patience >= 0, "run.patience", r.patience, "an integer ≥ 0 (epochs; 0 = off)")
    if r.patience:
        _check(r.select == "val", "run.patience", r.patience,
               "0 unless run.select=val: early stopping watches the validation split (data.val_size)")
    if r.select == "val":
        _check(d.val_size > 0, "run.select", r.select, "'test' unless data.val_size > 0")
    _check(bool(r.name) and "/" not in r.name and r.name not in (".", ".."), "run.name", r.name,
           "a non-empty name without '/'")


def check_effect(cfg: Any) -> None:
    """Refuse a value that would be recorded in the run's config.yaml and then change nothing,
    because another value switches off what it feeds; the message names the value to set.

    Checked for a new config (``wpat.config.load_config``), not for a stored one, which trained
    as it was. Settings of a behaviour that is not selected are allowed, as a component's
    options are (a preset states them for the variants it may switch to): ``data.mix_alpha``
    with ``data.mix=none``, ``data.padding`` without crops, ``perturb.warmup`` and
    ``perturb.alternations`` with ``perturb.name=none``, ``schedule.update`` and
    ``schedule.first_epoch`` with a constant schedule. docs/design.md lists every case.
    """
    d, o, p, r, epochs = cfg.data, cfg.optim, cfg.perturb, cfg.run, cfg.schedule.epochs
    if d.extra_fraction == 0 and d.extra is not None:
        raise WpatError(f"data.extra: {d.extra!r} is read only when data.extra_fraction > 0 (the share of "
                        f"each batch drawn from it; RST: 0.5); set data.extra_fraction, or drop data.extra")
    if d.extra_fraction == 0 and d.extra_weight != 1:
        raise WpatError(f"data.extra_weight: {d.extra_weight:g} weighs extra examples, but data.extra_fraction "
                        f"is 0 and none are drawn; set data.extra_fraction (and data.extra=PATH), or "
                        f"data.extra_weight=1")
    if o.l2 > 0 and o.weight_decay > 0:
        raise WpatError(f"optim.weight_decay: {o.weight_decay:g} is replaced by optim.l2={o.l2:g} (the conv and "
                        f"linear weights decay with optim.l2, the rest not at all); set optim.weight_decay=0")
    if p.name != "none" and p.warmup >= epochs:
        raise WpatError(f"perturb.warmup: {p.warmup} plain epochs leave none of schedule.epochs={epochs} to "
                        f"perturb.name={p.name}; set perturb.warmup below {epochs}, or perturb.name=none")
    if r.keep_every > epochs:
        raise WpatError(f"run.keep_every: {r.keep_every} is more than schedule.epochs={epochs}, so no "
                        f"epoch-NNN.pt would be kept; set run.keep_every to at most {epochs}, or 0 for none")
    # The earliest early stop: the best epoch is 1, the stop comes after epoch 1 + patience,
    # and it must come before the last epoch.
    if r.patience and 1 + r.patience >= epochs:
        fix = f"at most {epochs - 2}, or 0 for off" if epochs > 2 else "0 (off)"
        raise WpatError(f"run.patience: {r.patience} epochs without a better val accuracy can never end a run "
                        f"of schedule.epochs={epochs} before its last epoch; set run.patience to {fix}")
