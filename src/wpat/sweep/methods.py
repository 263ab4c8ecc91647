"""Methods as one axis of a sweep: named bundles of settings, presets, and their library.

A **method** is what a row of a leaderboard stands for: an objective, a weight perturbation and
their options (``trades-awp``: TRADES with AWP at γ = 0.005), or a whole preset. ``wpat sweep
CONFIG --methods ...`` trains every method × grid point × seed, each run starting from the
method's preset (or CONFIG), then the method's settings, then the settings shared by the
sweep, then its grid point and seed. A method is named in ``--methods`` (read by
:func:`wpat.sweep.arguments.parse_methods`) in one of these ways:

- ``NAME`` of a bundle in a method file: the library shipped with wpat
  (``wpat/configs/methods/*.yaml``, ``wpat sweep --list-methods`` lists it) or a file given in
  the same ``--methods``;
- ``GROUP``: every bundle that lists the group under ``groups`` (``leaderboard``: AT, TRADES
  and MART, each with no perturbation, AWP and RWP), in library order;
- ``FILE.yaml``: every bundle defined in that file, in its order;
- ``NAME=SETTING,SETTING,...``: a bundle defined on the command line; a setting is
  ``KEY=VALUE``, and the first may instead name a method or preset to start from
  (``awp2=at-awp,perturb.awp.steps=2``);
- a preset name (``cifar10-wrn34-10-trades``): the whole preset is the method;
- ``OBJECTIVE`` or ``OBJECTIVE-PERTURBATION`` of registered components (``mart-awp``): that
  objective with that perturbation and the options CONFIG gives them, so a method registered
  later is a name in ``--methods`` without a bundle.

Several items may share one word, joined by ``;`` (names alone also by ``,``). A method file
maps names to bundles in the layout of a preset, with a section given as a string naming its
component::

    trades-awp:
      about: TRADES with AWP, γ 0.005 as the papers pair them (AWP §5.1, RWP §5.1)
      groups: [leaderboard]
      objective: trades
      perturb: {name: awp, awp: {gamma: 0.005}}

and optionally ``base: PRESET`` (the runs start from that preset instead of CONFIG) or
``extends: METHOD`` (that method's settings first). A method may set any config key but the
ones a sweep owns (``run.seed``, ``run.name``, ``run.out_dir``). The grid may vary a key a
method sets (``--methods at-awp --grid perturb.awp.gamma=0.005,0.02``): the grid's value wins and
shows in the runs' names; a key the sweep's shared settings also set is an error rather than a
silent override. Unknown components
and bad values are found when the sweep is planned, before any run starts
(:func:`wpat.sweep.grid.plan`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from wpat.configuration.config import PRESET_DIR, Config, list_presets
from wpat.configuration.values import flatten
from wpat.helpers.errors import WpatError
from wpat.helpers.fs import read_yaml_mapping

LIBRARY_DIR = PRESET_DIR / "methods"
METHOD_KEY = "method"  # the pseudo grid key of the methods axis in run settings and the manifest
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*")
BUNDLE_KEYS = ("about", "groups", "base", "extends")  # a bundle's own keys beside config sections
OWNED = ("run.seed", "run.name", "run.out_dir")  # set by the sweep for every run


@dataclass(frozen=True)
class Method:
    """One method of a sweep: the preset its runs start from (None: the sweep's config) and
    its settings, ``KEY=VALUE`` applied in order on top of it."""

    name: str
    base: str | None = None
    settings: tuple[str, ...] = ()
    about: str = field(default="", compare=False)
    groups: tuple[str, ...] = field(default=(), compare=False)

    def definition(self) -> dict[str, Any]:
        """What the method computes, as the sweep manifest records it."""
        return {"base": self.base, "settings": list(self.settings)}

    def describe(self) -> str:
        """``base PRESET; KEY=VALUE ...`` in one line."""
        parts = ([f"base {self.base}"] if self.base else []) + [" ".join(self.settings) or "(config as is)"]
        return "; ".join(parts)

    def keys(self) -> list[str]:
        return [s.split("=", 1)[0] for s in self.settings]


# ---------------------------------------------------------------------- values and names


def override_text(value: Any) -> str:
    """A YAML value as the text of a ``KEY=VALUE`` override that reads back the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return str(value)


def check_name(name: str, where: str) -> str:
    if not NAME.fullmatch(name) or "__" in name:
        raise WpatError(f"{where}: method name {name!r} must be letters, digits and . + - _ "
                        f"(no '__', which separates the parts of a run's name)")
    return name


def check_setting(setting: str, where: str) -> str:
    key, sep, value = setting.partition("=")
    key = key.strip()
    if not sep or key.count(".") not in (1, 2) or not value.strip():
        raise WpatError(f"{where}: {setting!r} is not a KEY=VALUE setting (e.g. perturb.awp.gamma=0.005)")
    if key in OWNED:
        raise WpatError(f"{where}: {key} is set by the sweep for every run, not by a method")
    return f"{key}={value.strip()}"


# ---------------------------------------------------------------------- method files


def _bundle(name: str, body: Any, where: str) -> tuple[dict[str, Any], list[str]]:
    """A bundle of a method file: its own keys and its settings (``KEY=VALUE``, file order)."""
    if not isinstance(body, dict):
        raise WpatError(f"{where}: method {name!r} must be a mapping (objective:, perturb:, ...)")
    sections = [f.name for f in dataclasses.fields(Config)]
    own = {k: body[k] for k in BUNDLE_KEYS if k in body}
    tree = {}
    for section, values in body.items():
        if section in BUNDLE_KEYS:
            continue
        if section not in sections:
            raise WpatError(f"{where}: method {name!r}: {section!r} is neither a config section "
                            f"({', '.join(sections)}) nor one of {', '.join(BUNDLE_KEYS)}")
        tree[section] = {"name": values} if isinstance(values, str) else values  # `perturb: awp`
    settings = [f"{key}={override_text(value)}" for key, value in flatten(tree, f"{where}: method {name!r}").items()]
    groups = own.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise WpatError(f"{where}: method {name!r}: groups must be a list of names")
    for key in ("about", "base", "extends"):
        if key in own and not isinstance(own[key], str):
            raise WpatError(f"{where}: method {name!r}: {key} must be a string")
    return own, [check_setting(s, f"{where}: method {name!r}") for s in settings]


def read_method_file(path: str | Path) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """The bundles of a method file by name, in file order (not yet resolved)."""
    path = Path(path)
    tree = read_yaml_mapping(path, "method file",
                             "a method file maps method names to bundles (objective:, perturb:, ...)")
    return {check_name(str(name), str(path)): _bundle(str(name), body, str(path)) for name, body in tree.items()}


def library_files() -> list[Path]:
    """The method files shipped with wpat, in name order."""
    return sorted(LIBRARY_DIR.glob("*.yaml"))


# ---------------------------------------------------------------------- resolving


class Library:
    """The method bundles a ``--methods`` can name: those of the given files first, then
    wpat's own; resolved on demand (``extends`` followed, cycles refused)."""

    def __init__(self, files: Iterable[str | Path] = ()) -> None:
        self.raw: dict[str, tuple[dict[str, Any], list[str]]] = {}
        self.origin: dict[str, str] = {}
        for path in [*files, *library_files()]:
            for name, bundle in read_method_file(path).items():
                if name not in self.raw:  # a user's file may redefine one of wpat's methods
                    self.raw[name] = bundle
                    self.origin[name] = str(path)

    def names(self) -> list[str]:
        return list(self.raw)

    def groups(self) -> dict[str, list[str]]:
        """Group name -> its methods, in library order."""
        found: dict[str, list[str]] = {}
        for name, (own, _) in self.raw.items():
            for group in own.get("groups", []):
                found.setdefault(group, []).append(name)
        return found

    def method(self, name: str, seen: tuple[str, ...] = ()) -> Method:
        """The bundle ``name``, resolved (``extends`` followed)."""
        if name in seen:
            raise WpatError(f"method {name!r}: 'extends' forms a cycle ({' -> '.join([*seen, name])})")
        own, settings = self.raw[name]
        base = own.get("base")
        if "extends" in own:
            parent = self.resolve_one(own["extends"], f"{self.origin[name]}: method {name!r} extends", seen + (name,))
            base = base or parent.base
            settings = [*parent.settings, *settings]
        return Method(name, base, tuple(settings), own.get("about", ""), tuple(own.get("groups", [])))

    def resolve_one(self, word: str, where: str, seen: tuple[str, ...] = ()) -> Method:
        """A single method name: a bundle, a preset, or OBJECTIVE[-PERTURBATION]."""
        if word in self.raw:
            return self.method(word, seen)
        if word in list_presets():
            return Method(word, word, (), f"the preset {word}")
        derived = derive(word)
        if derived is not None:
            return derived
        raise WpatError(f"{where} {word!r}: no such method, group or preset ({self.hint()})")

    def hint(self) -> str:
        from wpat.objectives import OBJECTIVES
        from wpat.perturb import PERTURBATIONS

        return (f"methods: {', '.join(self.names())}; groups: {', '.join(self.groups())}; or "
                f"OBJECTIVE[-PERTURBATION] of objectives {', '.join(OBJECTIVES.names())} and "
                f"perturbations {', '.join(PERTURBATIONS.names())}; or define one as "
                f"NAME=KEY=VALUE,...; `wpat sweep --list-methods` lists them")


def derive(word: str) -> Method | None:
    """``mart`` -> objective.name=mart, perturb.name=none; ``at-awp-lsc`` -> objective.name=at,
    perturb.name=awp-lsc: names of registered components, with CONFIG's options for them."""
    from wpat.objectives import OBJECTIVES
    from wpat.perturb import PERTURBATIONS

    if word in OBJECTIVES.names():
        return Method(word, None, (f"objective.name={word}", "perturb.name=none"), f"{word}, no weight perturbation")
    for objective in OBJECTIVES.names():
        perturbation = word[len(objective) + 1:]
        if word.startswith(objective + "-") and perturbation in PERTURBATIONS.names():
            return Method(word, None, (f"objective.name={objective}", f"perturb.name={perturbation}"),
                          f"{objective} with {perturbation}")
    return None


def check_conflicts(methods: Sequence[Method], overrides: Sequence[str]) -> None:
    """A key a method sets and the sweep's shared settings set too would leave it unclear which
    one a run got: refused. (A grid key may vary a method's setting: each run's name and report
    row show the value it got.)"""
    shared = {o.split("=", 1)[0].strip() for o in overrides}
    for method in methods:
        for key in method.keys():
            if key in shared:
                raise WpatError(f"--methods {method.name} sets {key}, which the sweep's shared settings "
                                f"set too; set it in one place (--grid {key}=VALUE sets it for every method, "
                                f"in the runs' names)")


def list_methods(library: Library) -> str:
    """The library as ``wpat sweep --list-methods`` prints it."""
    lines = []
    for name in library.names():
        m = library.method(name)
        groups = f" [{', '.join(m.groups)}]" if m.groups else ""
        lines.append(f"{name}{groups}: {m.about}" if m.about else f"{name}{groups}")
        lines.append(f"    {m.describe()}")
    lines.append("groups: " + "; ".join(f"{g}: {', '.join(ms)}" for g, ms in library.groups().items()))
    lines.append("also: any preset name, and OBJECTIVE[-PERTURBATION] of registered components")
    return "\n".join(lines)
