"""Input a person sends, checked the same way by every route: text that must be valid, non-empty and bounded, and
the 422 that carries the form back with the reason."""
from __future__ import annotations

import json

from fasthtml.common import to_xml
from starlette.responses import HTMLResponse

from services.text import is_valid_unicode, valid_unicode

MAX_TITLE_CHARS = 500
MAX_MESSAGE_CHARS = 4_000


class InputError(ValueError):
    """Input a person can fix; its message is shown next to the field."""


def clean_text(text: object, what: str, limit: int) -> str:
    # A JSON body's values arrive as sent (12, true, [...]), and JSON's \ud800 escape makes a lone surrogate, which
    # the bus and the page cannot carry: refuse both.
    if not isinstance(text, str):
        raise InputError(f"{what} must be text.")
    if not is_valid_unicode(text):
        raise InputError(f"{what} is not valid Unicode: it contains a lone surrogate.")
    text = text.strip()
    if not text:
        raise InputError(f"{what} cannot be empty.")
    if len(text) > limit:
        raise InputError(f"{what} is too long: {len(text)} characters, the limit is {limit}.")
    return text


def shown(text: object) -> str:
    """What a form re-rendered around its error may show of the refused value: always something the page can carry."""
    return valid_unicode(text) if isinstance(text, str) else ""


def invalid(component) -> HTMLResponse:
    """422 with the form re-rendered around its error: htmx swaps it in (see HTMX_CONFIG), nothing is stored."""
    return HTMLResponse(to_xml(component), status_code=422)


def form_fields(frame: object) -> dict:
    """The fields of a form a tab sent over its WebSocket (chat-socket.js: one JSON object of the form's values).
    ValueError for anything else: no page of ours sent it."""
    if not isinstance(frame, str):
        raise ValueError("a binary frame")
    try:
        fields = json.loads(frame)  # (JSONDecodeError is a ValueError)
    except RecursionError:  # [[[[… nested deeper than Python's stack: 64 KiB frames can be
        raise ValueError("JSON nested too deep") from None
    if not isinstance(fields, dict):
        raise ValueError(f"a JSON {type(fields).__name__}, not an object")
    return fields


def whole_number(text: object, what: str, limit: int) -> int:
    """A whole number from 0 to `limit` from a query string (FastHTML's int cast answers 404 to "abc")."""
    try:
        number = int(text) if isinstance(text, str) and text.isascii() and text.isdigit() else -1
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        number = -1
    if not 0 <= number <= limit:
        raise InputError(f"Expected {what}: a whole number from 0 to {limit}.")
    return number
