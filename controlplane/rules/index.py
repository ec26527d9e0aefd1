"""Owns fast alert-to-rule matching: rules bucketed by the alertname they require.

Nearly every alert rule names its alert, so an alert is checked only against the rules of its
own alertname plus the few that match on other labels alone. A regex on alertname that is a
plain alternation of names (`=~"A|B"`) is bucketed under each name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

from controlplane.rules.matchers import Matcher

T = TypeVar("T")

_NAME_ALTERNATION = re.compile(r"[A-Za-z0-9_:]+(?:\|[A-Za-z0-9_:]+)*")

# (position in the original order, the item, (label, test) pairs with equality tests first)
_Entry = tuple[int, T, tuple[tuple[str, Callable[[str], bool]], ...]]


def _alertnames(matchers: Sequence[Matcher]) -> list[str] | None:
    """The alertnames a rule can match, or None when that is not a short literal list."""
    for m in matchers:
        if m.name != "alertname":
            continue
        if m.op == "=":
            return [m.value]
        if m.op == "=~" and _NAME_ALTERNATION.fullmatch(m.value):
            return list(dict.fromkeys(m.value.split("|")))
    return None


class RuleIndex(Generic[T]):
    """Built from (item, matchers) pairs; `match(labels)` returns matching items in their original order."""

    def __init__(self, items: Iterable[tuple[T, Sequence[Matcher]]]) -> None:
        self._by_alertname: dict[str, list[_Entry[T]]] = {}
        self._others: list[_Entry[T]] = []
        self._size = 0
        for position, (item, matchers) in enumerate(items):
            # Equality is cheaper than a regex and rejects most candidates, so it runs first.
            ordered = sorted(matchers, key=lambda m: m.op not in ("=", "!="))
            entry: _Entry[T] = (position, item, tuple((m.name, m.test) for m in ordered))
            names = _alertnames(matchers)
            if names is None:
                self._others.append(entry)
            else:
                for name in names:
                    self._by_alertname.setdefault(name, []).append(entry)
            self._size += 1

    def __len__(self) -> int:
        return self._size

    def match(self, labels: Mapping[str, str]) -> list[T]:
        get = labels.get
        found: list[tuple[int, T]] = []
        for entries in (self._by_alertname.get(get("alertname", ""), ()), self._others):
            for position, item, checks in entries:
                for name, test in checks:
                    if not test(get(name, "")):
                        break
                else:
                    found.append((position, item))
        if not found:
            return []
        if self._others and self._by_alertname:
            found.sort(key=lambda pair: pair[0])  # the two lists interleave in file order
        return [item for _, item in found]
