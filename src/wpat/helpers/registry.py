"""One registry, the same for models, attacks, objectives, perturbations, schedules and datasets.

Components register themselves by name with a decorator and are built by name, so adding a
method is adding a file, not another branch of an if/else ladder::

    MODELS = Registry("model")

    @MODELS.register("small_cnn")
    def small_cnn(num_classes: int, in_channels: int = 1, width: int = 32) -> nn.Module: ...

    model = MODELS.build("small_cnn", 10, width=16)

There is one rule for options: ``build`` passes exactly the options it is given, and an option
the component does not declare is an error naming the options it does take. Nothing is dropped
silently, so a setting meant for one method can never reach another. An entry may carry
metadata (``register("pgd20", label="PGD-20")``), read back with :meth:`Registry.info`.

A configured component is built with :meth:`Registry.build_from`, from a config section that
names it (``section.name``) and holds the options of each component under its name
(``section.options``, e.g. ``{"rwp": {"c_min": 4.0}}``): this one call checks the name and every
subsection's options and wraps any error as one line naming the config key. A registry made
with ``none=True`` also accepts the name ``none``, for which it builds nothing (None). The options
a component declares and their defaults are read here, from its signature, and nowhere else.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, TypeVar

from wpat.helpers.errors import WpatError, check_choice

T = TypeVar("T", bound=Callable[..., Any])


class Section(Protocol):
    """What :meth:`Registry.build_from` reads: the chosen name, and options by component name."""

    name: str
    options: Mapping[str, Mapping[str, Any]]


@dataclass
class Selection:
    """A :class:`Section` made in code, for a component no config section names (the training
    attack is ``Selection("pgd")``)."""

    name: str
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


class Registry:
    """A name -> factory mapping whose errors list the valid choices.

    Args:
        kind: what the entries are, for messages ("weight perturbation", "model", ...).
        none: whether ``none`` is a valid choice in a config section, built as None (no
            perturbation at all, rather than an object that does nothing).
    """

    def __init__(self, kind: str, *, none: bool = False) -> None:
        self.kind = kind
        self.none = none
        self._entries: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator: register a class or function as ``name``, with optional metadata."""

        def add(factory: T) -> T:
            if name in self._entries or (self.none and name == "none"):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            self._info[name] = dict(info)
            return factory

        return add

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; a one-line error listing the choices otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise WpatError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def info(self, name: str) -> dict[str, Any]:
        """The metadata given to ``register`` for ``name``."""
        self.get(name)
        return self._info[name]

    def _parameters(self, name: str) -> list[inspect.Parameter]:
        """The keyword parameters of ``name``'s factory (a class: its ``__init__``'s)."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        return [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name != "self"]

    def options(self, name: str) -> list[str]:
        """The keyword options the factory of ``name`` declares, in order."""
        return [p.name for p in self._parameters(name)]

    def defaults(self, name: str) -> dict[str, Any]:
        """``{option: default}`` of the options of ``name`` that have a default."""
        return {p.name: p.default for p in self._parameters(name) if p.default is not p.empty}

    def check_options(self, name: str, options: Iterable[str], reserved: Iterable[str] = ()) -> None:
        """The one rule for options: one a factory does not declare is a WpatError naming the
        ones it does. ``reserved`` options are the caller's to pass, not the user's to set."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return
        declared = [o for o in self.options(name) if o not in set(reserved)]
        unknown = [k for k in options if k not in declared]
        if unknown:
            raise WpatError(f"{self.kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                            f"its options: {', '.join(declared) or 'none'}")

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Build ``name`` with ``options``; an option it does not declare is a WpatError."""
        self.check_options(name, options)
        return self.get(name)(*args, **options)

    def choices(self) -> list[str]:
        """The names a config section may give: ``none`` first where allowed, then every entry."""
        return ["none", *self.names()] if self.none else self.names()

    def check_section(self, section: Section, key: str, reserved: Iterable[str] = ()) -> None:
        """``key.name`` names a choice, and each subsection ``key.<component>`` a registered
        component and only options it declares (``reserved`` ones are the caller's), whether or
        not that component is the one chosen: a preset may state the settings of every method
        it can switch to, but not misspell one."""
        check_choice(f"{key}.name", section.name, self.choices())
        for name, options in section.options.items():
            if name not in self:
                raise WpatError(f"{key}.{name}: there is no {self.kind} {name!r}; "
                                f"valid choices: {', '.join(self.names())}")
            try:
                self.check_options(name, options, reserved)
            except WpatError as err:
                raise WpatError(f"{key}.{name}: {err}") from None

    def build_from(self, section: Section, key: str, *args: Any, **reserved: Any) -> Any:
        """The component ``section`` chooses, built with the options under its name and the
        caller's ``reserved`` ones (``epochs=`` of a schedule, ``num_classes=`` of a model); None
        for ``none`` where the registry allows it. Checked first by :meth:`check_section`; any
        error, also a value the component rejects, is one WpatError naming ``key``."""
        self.check_section(section, key, reserved)
        if self.none and section.name == "none":
            return None
        options = dict(section.options.get(section.name, {}))
        try:
            return self.get(section.name)(*args, **reserved, **options)
        except WpatError as err:
            raise WpatError(f"{key}.{section.name}: {err}") from None
        except (TypeError, ValueError, RuntimeError) as err:  # a value of a kind no check anticipated
            raise WpatError(f"{key}.{section.name}: invalid option value ({err})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_package(name: str, path: Iterable[str]) -> None:
    """Import every module of the package ``name`` (its ``__path__``): a component registers
    itself when its file is imported, so a new method's file is found without a list of imports."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{name}.{module.name}")
