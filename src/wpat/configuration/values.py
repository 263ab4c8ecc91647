"""The values of a configuration: parsing (``8/255``, ``inf``, YAML scalars), setting a
``section.key`` or ``section.component.option`` entry on a config tree, and checking the values
this layer owns. It works on any config tree (``wpat.configuration.config.Config``) handed to it and imports
no component.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from wpat.helpers.errors import WpatError, check, check_choice, is_finite
from wpat.helpers.threat import BNMode, Norm


# --------------------------------------------------------------------------- parsing values


def parse_number(text: str) -> float:
    """Parse ``0.03``, ``8/255``, ``1e-3``, ``inf``; raise ValueError otherwise."""
    text = text.strip()
    if "/" in text:
        return float(Fraction(text))
    return float(text)


# How a command-line override spells YAML's null, the "not set" of an optional value.
UNSET = ("null", "~")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    if get_origin(annotation) is Union:
        options = [a for a in get_args(annotation) if a is not type(None)]
        # Only YAML's null leaves an optional value unset: None from a YAML file or a stored
        # config, `null` or `~` on the command line. The word "none" is a value like any other
        # (`data.augment=none` chooses no augmentation, which is not "the dataset's default").
        if value is None or (isinstance(value, str) and value.strip().lower() in UNSET):
            return None
        try:
            return _coerce(value, options[0], key)
        except WpatError as err:
            raise WpatError(f"{err} (null leaves {key} unset)") from None
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


def validate(cfg: Any) -> None:
    """Check every value this layer owns. Component names and options are checked where the
    components are built (``wpat.training.experiment.build_components``), by their own registries."""
    d, p, s = cfg.data, cfg.perturb, cfg.schedule
    for key, value in (("data.name", d.name), ("model.name", cfg.model.name), ("objective.name", cfg.objective.name),
                       ("perturb.name", p.name), ("schedule.name", s.name)):
        check(bool(value), key, value, "a name")
    _validate_data(d)
    _validate_model(cfg.model)
    _validate_attack(cfg.attack)
    _validate_eval(cfg.eval)
    _validate_training(p, cfg.optim, s)
    _validate_run(cfg.run, d)


def _validate_data(d: Any) -> None:
    check(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer ≥ 1")
    for key in ("train_subset", "test_subset", "val_size"):
        check(getattr(d, key) >= 0, f"data.{key}", getattr(d, key), "an integer ≥ 0 (0 = all / none)")
    check_choice("data.padding", d.padding, ["zeros", "reflect"])
    check(is_finite(d.extra_fraction) and 0 <= d.extra_fraction < 1, "data.extra_fraction", d.extra_fraction,
          "a fraction in [0, 1) of each batch")
    check(is_finite(d.extra_weight) and d.extra_weight >= 0, "data.extra_weight", d.extra_weight, "a number ≥ 0")
    check(d.cutout >= 0, "data.cutout", d.cutout, "a patch length ≥ 0 (pixels; 0 = off)")
    check(is_finite(d.mix_alpha) and d.mix_alpha > 0, "data.mix_alpha", d.mix_alpha, "a number > 0")
    if d.classes is not None:
        check(all(float(c).is_integer() and c >= 0 for c in d.classes) and len(set(d.classes)) == len(d.classes)
              and len(d.classes) >= 2, "data.classes", d.classes, "a list of at least 2 distinct class numbers")
    check(is_finite(d.rotation) and 0 <= d.rotation <= 180, "data.rotation", d.rotation, "degrees in [0, 180]")


def _validate_model(m: Any) -> None:
    if (m.mean is None) != (m.std is None):
        raise WpatError("model.mean and model.std: give both (per-channel lists) or neither (the dataset's)")
    if m.std is not None:
        check(len(m.mean) == len(m.std) and all(x > 0 for x in m.std), "model.std", m.std,
              "positive numbers, one per channel like model.mean")


def _validate_attack(a: Any) -> None:
    Norm.parse(a.norm, "attack.norm")
    check(is_finite(a.eps) and a.eps > 0, "attack.eps", a.eps, "a number > 0 (pixel units, e.g. 8/255)")
    check(is_finite(a.alpha) and a.alpha > 0, "attack.alpha", a.alpha, "a number > 0 (pixel units, e.g. 2/255)")
    check(a.steps >= 1, "attack.steps", a.steps, "an integer ≥ 1")
    if a.bn_mode is not None:
        BNMode.parse(a.bn_mode, "attack.bn_mode")
    later = {"attack.later_eps": a.later_eps, "attack.later_alpha": a.later_alpha, "attack.later_steps": a.later_steps}
    if a.later_from is None:
        for key, value in later.items():
            check(value is None, key, value, "null unless attack.later_from names the epoch it applies from")
    else:
        check(a.later_from >= 0, "attack.later_from", a.later_from, "an epoch >= 0 (counted from 0), or null")
        check(any(v is not None for v in later.values()), "attack.later_from", a.later_from,
              "null unless attack.later_eps, attack.later_alpha or attack.later_steps changes the attack")
        for key in ("attack.later_eps", "attack.later_alpha"):
            if later[key] is not None:
                check(is_finite(later[key]) and later[key] > 0, key, later[key], "a number > 0 (pixel units), or null")
        if a.later_steps is not None:
            check(a.later_steps >= 1, "attack.later_steps", a.later_steps, "an integer ≥ 1, or null")


def _validate_eval(e: Any) -> None:
    check(e.steps >= 1, "eval.steps", e.steps, "an integer ≥ 1")
    if e.alpha is not None:
        check(is_finite(e.alpha) and e.alpha > 0, "eval.alpha", e.alpha, "a number > 0")
    check(e.n_train >= 0, "eval.n_train", e.n_train, "an integer ≥ 0")
    check(e.batch_size >= 1, "eval.batch_size", e.batch_size, "an integer ≥ 1")
    check(e.every >= 1, "eval.every", e.every, "an integer ≥ 1")


def _validate_training(p: Any, o: Any, s: Any) -> None:
    check(p.warmup >= 0, "perturb.warmup", p.warmup, "an integer ≥ 0 (epochs)")
    check(p.alternations >= 1, "perturb.alternations", p.alternations, "an integer ≥ 1")
    check(is_finite(o.lr) and o.lr > 0, "optim.lr", o.lr, "a number > 0")
    check(is_finite(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", o.momentum, "a number in [0, 1)")
    check(is_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number ≥ 0")
    check(is_finite(o.l1) and o.l1 >= 0, "optim.l1", o.l1, "a number ≥ 0 (0 = off)")
    check(is_finite(o.l2) and o.l2 >= 0, "optim.l2", o.l2, "a number ≥ 0 (0 = off)")
    check_choice("optim.lr_groups", o.lr_groups, ["all", "first"])
    if o.nesterov:
        check(o.momentum > 0, "optim.nesterov", o.nesterov, "false unless optim.momentum > 0 (Nesterov "
              "momentum needs momentum)")
    check(s.epochs >= 1, "schedule.epochs", s.epochs, "an integer ≥ 1")
    check_choice("schedule.first_epoch", s.first_epoch, [0, 1])
    check_choice("schedule.update", s.update, ["step_start", "step_end", "epoch"])


def _validate_run(r: Any, d: Any) -> None:
    check(r.seed >= 0, "run.seed", r.seed, "an integer ≥ 0")
    check(r.threads >= 0, "run.threads", r.threads, "an integer ≥ 0 (0 = torch's default)")
    check(r.checkpoint_every >= 0, "run.checkpoint_every", r.checkpoint_every, "an integer ≥ 0 (steps; 0 = epoch ends)")
    check(r.keep_every >= 0, "run.keep_every", r.keep_every, "an integer ≥ 0 (epochs; 0 = none)")
    check_choice("run.select", r.select, ["test", "val"])
    check(r.ema == 0 or (is_finite(r.ema) and 0 < r.ema < 1), "run.ema", r.ema, "a decay in (0, 1), or 0 for off")
    check_choice("run.average", r.average, ["ema", "swa"])
    check(r.ema_start >= 0, "run.ema_start", r.ema_start, "an epoch ≥ 0 (counted from 0)")
    check(r.swa_start >= 0, "run.swa_start", r.swa_start, "an epoch ≥ 0 (counted from 0)")
    check(r.swa_every >= 1, "run.swa_every", r.swa_every, "an integer ≥ 1 (epochs)")
    check(r.patience >= 0, "run.patience", r.patience, "an integer ≥ 0 (epochs; 0 = off)")
    if r.lsc_threshold is not None:
        check(r.lsc_threshold >= 0, "run.lsc_threshold", r.lsc_threshold, "a loss ≥ 0 (nats), or null")
    if r.patience:
        check(r.select == "val", "run.patience", r.patience,
              "0 unless run.select=val: early stopping watches the validation split (data.val_size)")
    if r.select == "val":
        check(d.val_size > 0, "run.select", r.select, "'test' unless data.val_size > 0")
    check(bool(r.name) and "/" not in r.name and r.name not in (".", ".."), "run.name", r.name,
          "a non-empty name without '/'")


def check_effect(cfg: Any) -> None:
    """Refuse a value that would be recorded in the run's config.yaml and then change nothing,
    because another value switches off what it feeds; the message says what to set.

    Checked for a new config (``wpat.configuration.config.load_config``), not for a stored one, which trained
    as it was. Settings of a behaviour that is not selected are allowed, as a component's
    options are (a preset states them for the variants it may switch to): ``data.mix_alpha``
    with ``data.mix=none``, ``data.padding`` without crops, ``perturb.warmup`` and
    ``perturb.alternations`` with ``perturb.name=none``, ``schedule.update`` and
    ``schedule.first_epoch`` with a constant schedule. docs/design.md lists every case.
    """
    d, o, p, r, epochs = cfg.data, cfg.optim, cfg.perturb, cfg.run, cfg.schedule.epochs
    check(d.extra is None or d.extra_fraction > 0, "data.extra", d.extra,
          "data.extra_fraction > 0 to read it (the share of each batch drawn from it; RST: 0.5), or no data.extra")
    check(d.extra_weight == 1 or d.extra_fraction > 0, "data.extra_weight", d.extra_weight,
          "1 while data.extra_fraction is 0 (no extra example to weigh), or data.extra_fraction > 0 with "
          "data.extra=PATH")
    check(o.weight_decay == 0 or o.l2 == 0, "optim.weight_decay", o.weight_decay,
          f"0 with optim.l2={o.l2:g}, which replaces it (the conv and linear weights decay with optim.l2, "
          f"the rest not at all)")
    check(o.lr_groups == "all" or o.l2 > 0, "optim.lr_groups", o.lr_groups,
          "all unless optim.l2 > 0 (only L2 puts BatchNorm parameters and biases in a group of their own)")
    check(p.name == "none" or p.warmup < epochs, "perturb.warmup", p.warmup,
          f"fewer plain epochs than schedule.epochs={epochs}, or perturb.name=none (perturb.name={p.name} "
          f"would never run)")
    check(cfg.attack.later_from is None or cfg.attack.later_from < epochs, "attack.later_from",
          cfg.attack.later_from, f"an epoch before schedule.epochs={epochs} (counted from 0; the later attack "
          f"would never train), or null")
    check(r.average != "swa" or r.swa_start < epochs, "run.swa_start", r.swa_start,
          f"an epoch before schedule.epochs={epochs} (counted from 0) with run.average=swa (no epoch would be "
          f"averaged)")
    check(r.keep_every <= epochs, "run.keep_every", r.keep_every,
          f"at most schedule.epochs={epochs} (no epoch-NNN.pt would be kept), or 0 for none")
    # The earliest early stop: the best epoch is 1, the stop comes after epoch 1 + patience,
    # and it must come before the last epoch.
    check(not r.patience or 1 + r.patience < epochs, "run.patience", r.patience,
          (f"at most {epochs - 2}, or 0 for off" if epochs > 2 else "0 (off)")
          + f" (a stop must come before the last of schedule.epochs={epochs}, and the best epoch is at least 1)")
