"""One way to build messages for two worlds: rclpy's generated classes and rosbags' dataclasses.

Every converter takes a :class:`MessageFactory` and calls ``make("pkg/msg/Name", **fields)``, so the
node (rclpy) and the bag tool and tests (rosbags, no ROS) run the same code. Callers pass numeric
arrays as numpy arrays and leave out fields they don't care about; each factory turns that into what
its message classes accept. Reading needs no adapter: both kinds expose plain attributes, and numpy
reads rclpy's ``array.array`` sequences and rosbags' ndarrays alike through the buffer protocol.
"""

from __future__ import annotations

import array
import importlib
from typing import Any, Protocol

import numpy as np
from rosbags.typesys import Stores
from rosbags.typesys.store import Typestore

from ovsam_ros.ros.interfaces import typestore


class MessageError(ValueError):
    """A message type that does not exist or a field that does not fit it."""


class MessageFactory(Protocol):
    def make(self, type_name: str, **fields: Any) -> Any:
        """A message of ``type_name`` (``pkg/msg/Name``); omitted fields take their ROS defaults."""
        ...


_NUMPY = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
    "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64,
}
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4  # rosbags' Nodetype values


class RosbagsFactory:
    """Messages as rosbags dataclasses, which need every field: the defaults come from the typestore."""

    def __init__(self, store: Typestore | None = None) -> None:
        self.store = typestore(Stores.ROS2_JAZZY) if store is None else store

    def make(self, type_name: str, **fields: Any) -> Any:
        try:
            cls = self.store.types[type_name]
            _, fielddefs = self.store.fielddefs[type_name]
        except KeyError:
            raise MessageError(f"unknown message type {type_name!r}") from None
        known = {name for name, _ in fielddefs}
        if extra := set(fields) - known:
            raise MessageError(f"{type_name} has no field(s) {sorted(extra)}")
        values = {}
        for name, desc in fielddefs:
            values[name] = self._coerce(desc, fields[name]) if name in fields else self._default(desc)
        return cls(**values)

    def serialize(self, msg: Any) -> bytes:
        """CDR bytes, as a rosbag2 file or a DDS wire holds them."""
        return bytes(self.store.serialize_cdr(msg, msg.__msgtype__))

    def deserialize(self, data: bytes, type_name: str) -> Any:
        return self.store.deserialize_cdr(data, type_name)

    @staticmethod
    def _coerce(desc: tuple, value: Any) -> Any:
        """Numeric sequences must be numpy arrays of the exact dtype for rosbags' serialiser."""
        kind, rest = desc
        if kind in (_ARRAY, _SEQUENCE) and rest[0][0] == _BASE and rest[0][1][0] in _NUMPY:
            value = np.asarray(value, dtype=_NUMPY[rest[0][1][0]]).reshape(-1)
        if kind == _ARRAY and len(value) != rest[1]:
            raise MessageError(f"a fixed-size array field needs {rest[1]} elements, got {len(value)}")
        return value

    def _default(self, desc: tuple) -> Any:
        kind, rest = desc
        if kind == _BASE:
            base = rest[0]
            return "" if base in ("string", "wstring") else _NUMPY[base](0).item()
        if kind == _NAME:
            return self.make(rest)
        inner, length = rest
        if inner[0] == _BASE and inner[1][0] in _NUMPY:
            return np.zeros(length if kind == _ARRAY else 0, dtype=_NUMPY[inner[1][0]])
        return [self._default(inner) for _ in range(length if kind == _ARRAY else 0)]


_TYPECODES = {
    "uint8": "B", "int8": "b", "uint16": "H", "int16": "h",
    "uint32": "I", "int32": "i", "uint64": "Q", "int64": "q", "float": "f", "double": "d",
}


class RclpyFactory:
    """Messages as rclpy's generated classes (imported on first use, so ROS is needed only here).

    Generated classes take keyword arguments and default the rest; their unbounded numeric
    sequences want ``array.array`` (fixed-size arrays take numpy arrays as they are).
    """

    def __init__(self) -> None:
        self._classes: dict[str, tuple[type, dict[str, str]]] = {}

    def make(self, type_name: str, **fields: Any) -> Any:
        cls, field_types = self._lookup(type_name)
        for name, value in fields.items():
            kind = field_types.get(name, "")
            if isinstance(value, np.ndarray) and kind.startswith("sequence<"):
                element = kind[len("sequence<"):].split(",")[0].rstrip(">")
                if element in _TYPECODES:
                    seq = array.array(_TYPECODES[element])
                    seq.frombytes(np.ascontiguousarray(value, dtype=seq.typecode).tobytes())
                    fields[name] = seq
                else:
                    fields[name] = value.tolist()
        return cls(**fields)

    def _lookup(self, type_name: str) -> tuple[type, dict[str, str]]:
        if type_name not in self._classes:
            try:
                package, kind, name = type_name.split("/")
                cls = getattr(importlib.import_module(f"{package}.{kind}"), name)
            except (ValueError, ImportError, AttributeError) as exc:
                raise MessageError(f"cannot import message type {type_name!r}: {exc}") from None
            self._classes[type_name] = (cls, cls.get_fields_and_field_types())
        return self._classes[type_name]
