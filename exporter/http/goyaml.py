"""YAML read the way the exporter-toolkit reads its web config: Go's yaml.v2 `UnmarshalStrict` into
typed fields, so that the same files are accepted and refused.

What that means here, and differs from `yaml.safe_load`: unknown and repeated keys are errors; a
string field takes any scalar as written (`X-XSS-Protection: 1` is "1", `true` is "true"); a bool
takes YAML 1.1 words (y, yes, on...) but not a quoted "true"; an int truncates a float; a duration is
Go's syntax ("1m30s") or a bare integer counted in nanoseconds; null is the field's zero value.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Union

import yaml

# A field's type: a scalar ("str", "enum": a str whose null is None, "bool", "int", "duration"),
# ["list", item], ["map", value] or a struct {key: type}.
Kind = Union[str, list, dict]

_BOOLS = {**dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
          **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False)}
_NULLS = {"", "~", "null", "Null", "NULL"}
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOATS = {".nan": float("nan"), ".NaN": float("nan"), ".NAN": float("nan")}
for _sign, _value in (("", float("inf")), ("+", float("inf")), ("-", float("-inf"))):
    _SPECIAL_FLOATS.update({f"{_sign}{w}": _value for w in (".inf", ".Inf", ".INF")})
_DURATION_UNITS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": 10**9,
                   "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]+)")
_INT64 = 2**63 - 1


class GoYAMLError(ValueError):
    """The file is not what the typed fields accept; the message names the key path and line."""


def load(text: str, schema: dict) -> dict:
    """The first YAML document of `text`, decoded against `schema` (a struct)."""
    try:
        node = next(iter(yaml.compose_all(text, Loader=yaml.SafeLoader)), None)
    except yaml.YAMLError as exc:
        raise GoYAMLError(f"not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    return (decode(node, schema, "") if node is not None else None) or {}


def decode(node: yaml.Node, kind: Kind, path: str) -> Any:
    if isinstance(node, yaml.ScalarNode) and _resolve(node)[0] == "null":
        return _zero(kind)
    if isinstance(kind, dict):
        return _struct(node, kind, path)
    if isinstance(kind, list):
        return _sequence(node, kind[1], path) if kind[0] == "list" else _mapping(node, kind[1], path)
    if not isinstance(node, yaml.ScalarNode):
        raise _error(node, path, f"cannot use a {_shape(node)} as a {kind}")
    return _SCALARS[kind](node, path)


def _zero(kind: Kind) -> Any:
    if isinstance(kind, (dict, list)):
        return None  # a zeroed struct (defaults lost), a nil list or map
    return {"str": "", "enum": None, "bool": False, "int": 0, "duration": 0}[kind]


def _struct(node: yaml.Node, fields: dict, path: str) -> dict:
    if not isinstance(node, yaml.MappingNode):
        raise _error(node, path, f"must be a mapping, not a {_shape(node)}")
    out: dict = {}
    for key_node, value_node in node.value:
        key = _text(key_node, path)
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise _error(key_node, where, "unknown key")
        if key in out:
            raise _error(key_node, where, "set twice")
        out[key] = decode(value_node, fields[key], where)
    return out


def _mapping(node: yaml.Node, kind: Kind, path: str) -> dict:
    if not isinstance(node, yaml.MappingNode):
        raise _error(node, path, f"must be a mapping, not a {_shape(node)}")
    out: dict = {}
    for key_node, value_node in node.value:
        key = _text(key_node, path)
        if key in out:
            raise _error(key_node, f"{path}.{key}", "set twice")
        out[key] = decode(value_node, kind, f"{path}.{key}")
    return out


def _sequence(node: yaml.Node, kind: Kind, path: str) -> list:
    if not isinstance(node, yaml.SequenceNode):
        raise _error(node, path, f"must be a list, not a {_shape(node)}")
    return [decode(item, kind, f"{path}[{i}]") for i, item in enumerate(node.value)]


def _text(node: yaml.Node, path: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise _error(node, path, f"a key must be a scalar, not a {_shape(node)}")
    return "" if _resolve(node)[0] == "null" else node.value


def _string(node: yaml.ScalarNode, path: str) -> str:
    return node.value  # any scalar, as written


def _bool(node: yaml.ScalarNode, path: str) -> bool:
    tag, value = _resolve(node)
    if tag != "bool":
        raise _error(node, path, f"must be true or false, not {node.value!r}")
    return value


def _int(node: yaml.ScalarNode, path: str, duration: bool = False) -> int:
    tag, value = _resolve(node)
    if tag == "int" and abs(value) <= _INT64:
        return value
    if tag == "float" and value == value and -_INT64 <= value <= _INT64:
        return int(value)  # Go converts with truncation
    if tag == "str" and duration:
        ns = go_duration_ns(value)
        if ns is not None:
            return ns
        raise _error(node, path, f"not a duration (such as 1s, 100ms, 1m30s): {value!r}")
    raise _error(node, path, f"must be an integer, not {node.value!r}")


_SCALARS = {"str": _string, "enum": _string, "bool": _bool, "int": _int,
            "duration": lambda node, path: _int(node, path, duration=True)}


def _resolve(node: yaml.ScalarNode) -> tuple[str, Any]:
    """yaml.v2's reading of a scalar: quoted ones are strings, plain ones are looked at."""
    value = node.value
    if node.style is not None or not node.tag.startswith("tag:yaml.org,2002:"):
        return "str", value
    if value in _NULLS:
        return "null", None
    if value in _BOOLS:
        return "bool", _BOOLS[value]
    if value in _SPECIAL_FLOATS:
        return "float", _SPECIAL_FLOATS[value]
    number = _go_int(value.replace("_", ""))
    if number is not None:
        return "int", number
    if _FLOAT.match(value.replace("_", "")):
        return "float", float(value.replace("_", ""))
    return "str", value


def _go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64): decimal, 0x, 0o, 0b, and a leading 0 for octal."""
    body = text.lstrip("+-")
    if len(text) - len(body) > 1 or not body:
        return None
    sign = -1 if text.startswith("-") else 1
    lowered = body.lower()
    try:
        if lowered.startswith(("0x", "0o", "0b")):
            return sign * int(body, 0)
        if re.fullmatch(r"0[0-7]+", body):
            return sign * int(body, 8)
        if re.fullmatch(r"[0-9]+", body):
            return sign * int(body, 10)
    except ValueError:
        return None
    return None


def go_duration_ns(text: str) -> int | None:
    """Go's time.ParseDuration, in nanoseconds; None when Go refuses the text."""
    rest, sign = text, 1
    if rest[:1] in ("+", "-"):
        sign, rest = (-1 if rest[0] == "-" else 1), rest[1:]
    if rest == "0":
        return 0
    if not rest:
        return None
    total, pos = Fraction(0), 0
    while pos < len(rest):
        part = _DURATION_PART.match(rest, pos)
        if not part or not (part.group(1) or part.group(2)) or part.group(3) not in _DURATION_UNITS:
            return None
        number = Fraction(int(part.group(1) or "0"))
        if part.group(2):
            number += Fraction(int(part.group(2)), 10 ** len(part.group(2)))
        total += number * _DURATION_UNITS[part.group(3)]
        pos = part.end()
    if total > _INT64:
        return None
    return sign * int(total)


def _shape(node: yaml.Node) -> str:
    return {yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}.get(type(node), "scalar")


def _error(node: yaml.Node, path: str, message: str) -> GoYAMLError:
    return GoYAMLError(f"{path or 'the file'}: {message} (line {node.start_mark.line + 1})")
