"""One small registry used by models, attacks, objectives, perturbations and datasets.

Components register themselves by name with a decorator and are built by name from the
config, so adding a method is adding a file, not another branch of an if/else ladder::

    MODELS = Registry("model")

    @MODELS.register("small_cnn")
    def small_cnn(num_classes: int = 10) -> nn.Module: ...

    model = MODELS.build("small_cnn", num_classes=10)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Mapping, TypeVar

from wpat.errors import WpatError

T = TypeVar("T", bound=Callable[..., Any])


class Registry:
    """A name -> factory mapping whose lookup errors list the valid choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise WpatError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        factory = self.get(name)
        parameters = inspect.signature(factory).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        unknown = [k for k in kwargs if k not in parameters and not takes_any]
        if unknown:
            raise WpatError(f"{self.kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                            f"its options: {', '.join(p for p in parameters if p not in ('self', 'args', 'kwargs'))}")
        return factory(*args, **kwargs)

    def build_from(self, name: str, options: Mapping[str, Any]) -> Any:
        """Build ``name`` with the entries of ``options`` that its factory accepts.

        A config section holds the options of every method of its kind (``gamma``, ``c_min``,
        ``low``...); each method takes the ones it declares, so no per-method wiring is needed.
        """
        factory = self.get(name)
        accepted = inspect.signature(factory).parameters
        return factory(**{k: v for k, v in options.items() if k in accepted and v is not None})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
