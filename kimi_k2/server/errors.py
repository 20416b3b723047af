"""Errors in each API's own schema: one exception type, two renderings.

Every failure the server reports is an `APIError` carrying an HTTP status and a message that names the field,
value or limit involved. The OpenAI API renders it as `{"error": {"message", "type", "param", "code"}}`, the
Anthropic API as `{"type": "error", "error": {"type", "message"}}` — the shapes the official SDKs parse into
their `BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`, ... classes. Which one
applies is decided by the request path (`/v1/messages…` is Anthropic, everything else OpenAI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# HTTP status -> (OpenAI error type, Anthropic error type)
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "invalid_request_error"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    503: ("server_error", "overloaded_error"),
}


@dataclass
class APIError(Exception):
    status: int
    message: str
    param: str | None = None  # the request field at fault (OpenAI `param`)
    code: str | None = None  # machine-readable code (OpenAI `code`), e.g. "model_not_found"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: raised in the preparation processes, answered here
        return (APIError, (self.status, self.message, self.param, self.code))

    @property
    def openai_type(self) -> str:
        return _TYPES.get(self.status, _TYPES[500 if self.status >= 500 else 400])[0]

    @property
    def anthropic_type(self) -> str:
        return _TYPES.get(self.status, _TYPES[500 if self.status >= 500 else 400])[1]


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def openai_error_body(error: APIError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.openai_type, "param": error.param, "code": error.code}}


def anthropic_error_body(error: APIError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_body(error: APIError, path: str) -> dict[str, Any]:
    """The error body in the schema of the API that `path` belongs to."""
    return anthropic_error_body(error) if is_anthropic_path(path) else openai_error_body(error)
