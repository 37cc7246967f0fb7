"""Declared settings: a dataclass field that carries its description, valid range and whether it may
change live, and the one check of a value against that declaration.

The user config (:mod:`ovsam_ros.config`) declares its sections with these, and so does the engine
(:class:`ovsam_ros.engine.EngineConfig`), whose fields *are* the config's ``engine`` section: each
fact (default, range, description) is written once, where the setting is used. A leaf module with
no dependencies, so the engine can use it without depending on the config layer.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any


def setting(default: Any, description: str, *, choices: tuple[str, ...] = (),
            range: tuple[float, float] | None = None, pattern: str = "", dynamic: bool = False,
            parameter: bool = True) -> Any:
    """A dataclass field with what the node needs to declare it as a ROS parameter. ``parameter``
    False: validated like the others but set by code, never by the user (no ROS parameter)."""
    meta = {"description": description, "choices": choices, "range": range, "pattern": pattern,
            "dynamic": dynamic, "parameter": parameter}
    return field(default=default, metadata=meta)


def is_parameter(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("parameter"))


def check_setting(name: str, f: dataclasses.Field, value: Any, error: type[Exception] = ValueError) -> Any:
    """``value`` for field ``f`` (reported as ``name``): ints are coerced to floats where a float is
    expected, anything else that does not fit the type, choices, pattern or range raises ``error``."""
    kind = type(f.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise error(f"{name} must be a {kind.__name__}, got {value!r} ({type(value).__name__})")
    meta = f.metadata
    if meta["choices"] and value not in meta["choices"]:
        raise error(f"{name} must be one of {', '.join(meta['choices'])}; got {value!r}")
    if meta["pattern"] and not re.fullmatch(meta["pattern"], value):
        raise error(f"{name} {value!r} is not valid: {meta['description']}")
    if meta["range"] is not None:
        lo, hi = meta["range"]
        if not lo <= value <= hi:  # NaN fails this too
            raise error(f"{name} must be in [{lo}, {hi}]; got {value!r}")
    return value


def validate_settings(obj: Any, prefix: str = "", error: type[Exception] = ValueError) -> None:
    """Check (and coerce) every declared field of the frozen dataclass ``obj``; for ``__post_init__``."""
    for f in dataclasses.fields(obj):
        if "description" in f.metadata:
            object.__setattr__(obj, f.name, check_setting(prefix + f.name, f, getattr(obj, f.name), error))
