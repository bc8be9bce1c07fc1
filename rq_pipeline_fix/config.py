"""Environment variables, all with the ``RQ_PIPELINE_FIX_`` prefix, parsed in this one place."""

from __future__ import annotations

import os

DISABLE_VARIABLE = "RQ_PIPELINE_FIX_DISABLE"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str, default: bool = False) -> tuple[bool, str | None]:
    """The boolean value of environment variable ``name``, and a complaint when its value is not
    one we know. An unknown value counts as true: for a kill switch, doubt means hands off."""
    raw = os.environ.get(name)
    if raw is None:
        return default, None
    value = raw.strip().lower()
    if value in _TRUE:
        return True, None
    if value in _FALSE:
        return False, None
    return True, f"{name}={raw!r} is not one of 1/true/yes/on or 0/false/no/off; treating it as true"


def patching_disabled() -> tuple[bool, str | None]:
    """The kill switch: ``RQ_PIPELINE_FIX_DISABLE=1`` leaves RQ untouched."""
    return env_flag(DISABLE_VARIABLE)
