"""Text that is shown somewhere else (mail headers, logs, consoles): which characters must never get
there, and how a stored string is made safe to write. Pure functions.

Refused at the API, and also replaced where text is written, since a string can come from a row
stored before a rule existed or from a platform event that never passed through the API.
"""

from __future__ import annotations

import re
from typing import Final

# C0 controls, DEL, C1 controls, and the bidi embeddings, overrides and isolates (U+202A-U+202E,
# U+2066-U+2069): text shown in consoles, logs and emails must not be able to rewrite what is shown
# around it (a forged log line or mail header after a CR/LF, a name that reads backwards after U+202E,
# a terminal driven by ESC sequences). Unicode line and paragraph separators end a line too.
UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
REPLACEMENT: Final = "\ufffd"


def has_unsafe(text: str) -> bool:
    return UNSAFE.search(text) is not None


def one_line(text: str, max_length: int | None = None) -> str:
    """`text` with every unsafe character replaced by U+FFFD (visibly, so nothing is hidden from the
    reader), cut to `max_length` characters. Never more than one line, whatever it was given."""
    cleaned = UNSAFE.sub(REPLACEMENT, text)
    if max_length is not None and len(cleaned) > max_length:
        cleaned = cleaned[: max_length - 1] + "…"
    return cleaned
