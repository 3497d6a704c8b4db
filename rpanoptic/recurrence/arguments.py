"""The engine's argument rules, written once.

:class:`~.runner.Recurrence` and :class:`~.hgru.HGRUCell` check their arguments against the
``ARGUMENTS`` table of their modules (``runner.ARGUMENTS``, ``hgru.ARGUMENTS``, built from these
helpers); the Detectron2 layer (``rpanoptic.modeling.recurrent_config``) checks the config keys
that become those arguments against the same rules, and ``docs/CONFIG.md`` quotes their
``allowed`` text, so a rule and the words that explain it exist in one place.
"""

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

__all__ = ["Rule", "is_count", "is_number", "at_least", "one_of", "flag", "check_arguments"]


def is_count(value) -> bool:
    """An int (bool excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float (bool excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """``ok(value)`` says whether a value is valid; ``allowed`` says which are, to a user."""

    ok: Callable[[Any], bool]
    allowed: str


def at_least(minimum: int, note: str = "") -> Rule:
    """An integer >= ``minimum``."""
    suffix = f" ({note})" if note else ""
    return Rule(lambda v: is_count(v) and v >= minimum, f"an integer >= {minimum}{suffix}")


def one_of(values: Iterable) -> Rule:
    """One of ``values`` (their repr lists the choices)."""
    values = tuple(values)
    return Rule(lambda v: v in values, ", ".join(repr(v) for v in values))


def flag() -> Rule:
    """A bool (an int such as 1 is refused: a typo in a config should not pass as a switch)."""
    return Rule(lambda v: isinstance(v, bool), "True or False")


def check_arguments(owner: str, rules: Mapping[str, Rule], **values) -> None:
    """Raise ValueError naming ``owner``, the argument, its value and the allowed values for the
    first of ``values`` that breaks its rule."""
    for name, value in values.items():
        rule = rules[name]
        if not rule.ok(value):
            raise ValueError(f"{owner}: {name}={value!r} is invalid; allowed: {rule.allowed}.")
