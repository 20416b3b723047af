"""The four tools of the nano K2 demo: their OpenAI-style schemas and their implementations.

The nano model was trained (recipes/nano_k2) on conversations that declare exactly these schemas, so the demo,
the training data and the evaluation share this one definition. Weather and local time are simulated
(deterministic per city: there is no network); arithmetic and unit conversion are computed.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression with two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. 12 * 7"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_units",
            "description": "Convert a quantity between units.",
            "parameters": {
                "type": "object",
                "properties": {
                    "value": {"type": "number"},
                    "from_unit": {"type": "string"},
                    "to_unit": {"type": "string"},
                },
                "required": ["value", "from_unit", "to_unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]

CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "stormy", "clear"]
# (from, to) → factor; None marks Celsius → Fahrenheit.
CONVERSIONS: dict[tuple[str, str], float | None] = {
    ("km", "miles"): 0.621371,
    ("miles", "km"): 1.609344,
    ("kg", "lb"): 2.204623,
    ("lb", "kg"): 0.453592,
    ("celsius", "fahrenheit"): None,
    ("meters", "feet"): 3.280840,
}
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_EXPRESSION = re.compile(rf"^\s*{_NUMBER}\s*([-+*])\s*{_NUMBER}\s*$")


def fmt_number(x: float) -> str:
    """2 decimals at most, no trailing zeros: 145.4, 12, 0.62."""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def convert(value: float, from_unit: str, to_unit: str) -> float:
    key = (from_unit.lower(), to_unit.lower())
    if key not in CONVERSIONS:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}; known: {', '.join(f'{a}->{b}' for a, b in CONVERSIONS)}")
    factor = CONVERSIONS[key]
    out = value * 9 / 5 + 32 if factor is None else value * factor
    return float(fmt_number(round(out, 2)))


def calculate(expression: str) -> int | float:
    """`A OP B` with OP one of + - * and signed decimal operands, computed exactly (`Decimal`): an int when the
    result is whole, else the float whose shortest form is the exact decimal (`0.1 + 0.2` is 0.3, not 0.30000000000000004)
    while the result has at most 15 significant digits, which two operands of 7 digits keep."""
    match = _EXPRESSION.match(expression)
    if not match:
        raise ValueError(f"expected 'NUMBER OP NUMBER' with OP one of + - *, got {expression!r}")
    a, op, b = Decimal(match.group(1)), match.group(2), Decimal(match.group(3))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return int(value) if value == value.to_integral_value() else float(value)


def _city_hash(city: str) -> int:
    return int.from_bytes(hashlib.sha256(city.strip().lower().encode()).digest()[:8], "big")


def simulated_weather(city: str) -> dict[str, Any]:
    h = _city_hash(city)
    return {"city": city, "condition": CONDITIONS[h % len(CONDITIONS)], "temperature_c": int(h // 8 % 54) - 15}


def simulated_time(city: str) -> dict[str, Any]:
    h = _city_hash(city)
    return {"city": city, "time": f"{h % 24:02d}:{h // 24 % 60:02d}"}


def run_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Execute a demo tool; errors come back as `{"error": ...}` so the model sees them, as a real client would."""
    try:
        if name == "get_weather":
            return simulated_weather(str(arguments["city"]))
        if name == "get_time":
            return simulated_time(str(arguments["city"]))
        if name == "calculator":
            return {"result": calculate(str(arguments["expression"]))}
        if name == "convert_units":
            value = float(arguments["value"])
            result = convert(value, str(arguments["from_unit"]), str(arguments["to_unit"]))
            return {"value": arguments["value"], "from_unit": arguments["from_unit"], "to_unit": arguments["to_unit"],
                    "result": result}  # fmt: skip
    except (KeyError, ValueError, TypeError) as exc:
        return {"error": f"{name}: {exc}"}
    return {"error": f"unknown tool {name!r}"}
