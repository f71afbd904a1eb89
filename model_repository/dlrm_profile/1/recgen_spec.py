"""The strict JSON specs behind the typed parameters (`recgen_params`): a frozen dataclass per config parameter.

A spec is written with `to_json` and read with `from_model_config`: a missing or unknown key, or a value of the
wrong type, is a `ParameterError` naming the spec and the key, never a silent default. Copied next to every
generated model.py; the standard library only, Python 3.10.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, Union

SpecT = TypeVar("SpecT", bound="Spec")


class ParameterError(ValueError):
    """A model's config parameter does not hold the spec it should: the message names the spec and the key."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base of every parameter spec: strict JSON round trip."""

    #: The config.pbtxt parameter key that carries this spec.
    PARAMETER: ClassVar[str] = ""

    def to_json(self) -> str:
        """Compact JSON (read by the model, not by people), fields in declaration order."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls: type[SpecT], text: str) -> SpecT:
        """Parse JSON written by `to_json`; raises ParameterError on anything else."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ParameterError(f"{cls.__name__}: not JSON ({error})") from error
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls: type[SpecT], data: object, where: str = "") -> SpecT:
        """Build from decoded JSON: every field must be present, no other key may be."""
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise ParameterError(f"{where}: expected an object, got {type(data).__name__}")
        hints = _field_types(cls)
        missing = [name for name in hints if name not in data]
        unknown = sorted(set(data) - set(hints))
        if missing or unknown:
            raise ParameterError(f"{where}: missing keys {missing}, unknown keys {unknown}")
        values = {name: _decode(hint, data[name], f"{where}.{name}") for name, hint in hints.items()}
        return cls(**values)

    @classmethod
    def optional_from_model_config(cls: type[SpecT], model_config: Mapping[str, Any]) -> SpecT | None:
        """The spec of an optional feature (a front cache, say): None when the config has no such parameter."""
        if cls.PARAMETER not in model_config.get("parameters", {}):
            return None
        return cls.from_model_config(model_config)

    @classmethod
    def from_model_config(cls: type[SpecT], model_config: Mapping[str, Any]) -> SpecT:
        """Read the spec from a model config as Triton hands it to `initialize` (or as the server reports it)."""
        try:
            text = model_config["parameters"][cls.PARAMETER]["string_value"]
        except (KeyError, TypeError) as error:
            raise ParameterError(f"the model config has no parameter {cls.PARAMETER!r} ({cls.__name__})") from error
        return cls.from_json(text)


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved annotation, once per spec class."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {field.name: hints[field.name] for field in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


def _decode(hint: Any, value: object, where: str) -> Any:
    """Check `value` against the annotation `hint` and convert lists to tuples and objects to specs."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _decode(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ParameterError(f"{where}: expected a list, got {type(value).__name__}")
        arguments = typing.get_args(hint)
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_decode(arguments[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(arguments) != len(value):
            raise ParameterError(f"{where}: expected {len(arguments)} items, got {len(value)}")
        return tuple(
            _decode(a, item, f"{where}[{i}]") for i, (a, item) in enumerate(zip(arguments, value, strict=True))
        )
    if isinstance(hint, type) and issubclass(hint, Spec):
        return hint.from_dict(value, where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise ParameterError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
