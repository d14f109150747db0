"""Text that crosses a process boundary must be valid Unicode. JSON's `\\ud800` escape decodes to a lone surrogate
in Python, which UTF-8 cannot encode: msgpack refuses it on the bus and the page cannot be served with it."""
from __future__ import annotations

import re

# The longest reply text the worker may publish in one message: at 4 UTF-8 bytes a character at most that is 400 KB,
# well under the bus's 1 MiB frame limit, and far beyond what num_predict lets a model write.
MAX_REPLY_CHARS = 100_000
MAX_THINKING_CHARS = 50_000  # with the reply's 100,000, a `done` still fits one bus frame (1 MiB)

# The only code points in a Python str that UTF-8 cannot encode: surrogates (a proper pair is already one code point).
SURROGATE = re.compile(r"[\ud800-\udfff]")


def is_valid_unicode(text: str) -> bool:
    return SURROGATE.search(text) is None


def valid_unicode(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, the replacement character, so it can always be sent."""
    return SURROGATE.sub("\N{REPLACEMENT CHARACTER}", text)
