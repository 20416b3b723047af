"""JSON schemas the constrained-output tests hold every reply to: nested objects, arrays with bounds, enums,
numbers and integers (with ranges), strings with escapes and unicode (patterns, formats, lengths), optional and
required fields, `anyOf`, `$ref` with `$defs`, `const`, nullable types.

Strings and arrays carry bounds where a random-weight model could otherwise write for ever: the replies must be
complete within the tests' `max_tokens`, and a grammar allows what the schema allows.
"""

from __future__ import annotations

from typing import Any

S = {"type": "string", "maxLength": 12}  # a bounded string

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": S}, "required": ["name"], "additionalProperties": False},
    {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"], "additionalProperties": False},
    {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"],
     "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "why": {"type": ["string", "null"], "maxLength": 8}},
     "required": ["ok", "why"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
     "additionalProperties": False},
    {"type": "object", "properties": {"level": {"type": "integer", "minimum": 1, "maximum": 5}}, "required": ["level"],
     "additionalProperties": False},
    {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["score"],
     "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}},
     "required": ["ids"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                                                "required": ["lat", "lon"], "additionalProperties": False}},
     "required": ["point"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
        "c": {"type": "integer"}}, "required": ["c"], "additionalProperties": False}}, "required": ["b"],
        "additionalProperties": False}}, "required": ["a"], "additionalProperties": False},
    {"type": "object", "properties": {"title": S, "note": S}, "required": ["title"], "additionalProperties": False},
    {"type": "object", "properties": {"p": {"type": "integer"}, "q": S, "r": {"type": "boolean"}},
     "additionalProperties": False},  # all optional
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer"}, S]}}, "required": ["value"],
     "additionalProperties": False},
    {"type": "object", "properties": {"shape": {"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}}, "required": ["kind", "r"],
         "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}},
         "required": ["kind", "side"], "additionalProperties": False}]}}, "required": ["shape"], "additionalProperties": False},
    {"$defs": {"person": {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0}},
                          "required": ["name"], "additionalProperties": False}},
     "type": "object", "properties": {"author": {"$ref": "#/$defs/person"}}, "required": ["author"], "additionalProperties": False},
    {"$defs": {"item": {"type": "object", "properties": {"sku": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                        "required": ["sku", "qty"], "additionalProperties": False}},
     "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 2}},
     "required": ["items"], "additionalProperties": False},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}, "required": ["code"],
     "additionalProperties": False},
    {"type": "object", "properties": {"text": {"type": "string", "minLength": 3, "maxLength": 10}}, "required": ["text"],
     "additionalProperties": False},
    {"type": "object", "properties": {"quote": {"type": "string", "pattern": '^"[a-z]+\\\\n"$'}}, "required": ["quote"],
     "additionalProperties": False},  # escapes: a quote, a backslash and an n
    {"type": "object", "properties": {"greeting": {"enum": ["héllo", "你好", "😀 hi", "tab\there"]}}, "required": ["greeting"],
     "additionalProperties": False},  # unicode and an escaped tab in enum values
    {"type": "object", "properties": {"word": {"type": "string", "pattern": "^[à-ÿ一-龥]{1,4}$"}}, "required": ["word"],
     "additionalProperties": False},  # non-ASCII characters only
    {"type": "object", "properties": {"matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"},
                                                                             "minItems": 1, "maxItems": 2},
                                                 "minItems": 1, "maxItems": 2}}, "required": ["matrix"],
     "additionalProperties": False},
    {"type": "object", "properties": {"pair": {"type": "array", "prefixItems": [{"type": "integer"}, S], "minItems": 2,
                                               "maxItems": 2}}, "required": ["pair"], "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100}},
     "required": ["n"], "additionalProperties": False},
    {"type": "object", "properties": {"maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]}}, "required": ["maybe"],
     "additionalProperties": False},
    {"type": "object", "properties": {"status": {"const": "done"}, "count": {"type": "integer"}}, "required": ["status", "count"],
     "additionalProperties": False},
    {"type": "object", "properties": {"date": {"type": "string", "format": "date"}}, "required": ["date"],
     "additionalProperties": False},
    {"type": "object", "properties": {"meta": {"type": "object", "patternProperties": {"^[a-z]{1,6}$": {"type": "integer"}},
                                               "additionalProperties": False, "maxProperties": 2}},
     "required": ["meta"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4},
    {"enum": ["yes", "no", 1, None]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "name": S, "emails": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,5}@[a-z]{1,5}\\\\.com$"},
                              "maxItems": 2},
        "role": {"enum": ["admin", "dev"]}}, "required": ["name", "role"], "additionalProperties": False},
        "active": {"type": "boolean"}}, "required": ["user", "active"], "additionalProperties": False},
    {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"type": "null"}, {
        "type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"], "additionalProperties": False}]}},
                        "required": ["v", "next"], "additionalProperties": False}},
     "$ref": "#/$defs/node"},
]
