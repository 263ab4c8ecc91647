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
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Iterator, TypeVar

from wpat.errors import WpatError

T = TypeVar("T", bound=Callable[..., Any])


class Registry:
    """A name -> factory mapping whose errors list the valid choices.

    Args:
        kind: what the entries are, for messages ("weight perturbation", "model", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator: register a class or function as ``name``, with optional metadata."""

        def add(factory: T) -> T:
            if name in self._entries:
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

    def options(self, name: str) -> list[str]:
        """The keyword options the factory of ``name`` declares."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        return [p.name for p in parameters
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]

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

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
