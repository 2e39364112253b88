"""Plain-dict registries that refuse duplicate names and name the valid choices on a miss."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from neurohw.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' (did you mean 'x'?)' suffix naming the closest valid choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """A mapping name -> object for one kind of thing (activations, learners, datasets)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = item
        return item

    def get(self, name: str, key: str | None = None) -> T:
        """The item called `name`; `key` is the config key to name in the error."""
        try:
            return self._items[name]
        except KeyError:
            where = f"{key} = " if key else ""
            raise ConfigError(
                f"unknown {self.kind} {where}'{name}'{did_you_mean(str(name), list(self._items))};"
                f" valid: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
