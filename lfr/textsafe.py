"""Names, cameras and notes rendered as text, never as markup or terminal commands.

Watchlist names, camera names and notes come from whoever filled in a CSV or a config: ``Obama
[/x]`` is a rich markup error (it froze the dashboard) and ``\\x1b[2J`` clears the operator's
screen. Every place lfr shows one on a terminal passes it through here: control characters become
visible escapes (``\\x1b``), and the result goes into a ``rich.text.Text``, which is never parsed
as markup.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

# C0 controls (tab and newline included: a name is one line), DEL, and the C1 controls that some
# terminals obey as escapes (0x9b is a one-byte CSI); bidirectional overrides reorder what is shown.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(value: object, *, newlines: bool = False) -> str:
    """``value`` as printable text: each control character shown as its escape (newlines kept
    with ``newlines``, for log messages that hold a traceback)."""
    return _CONTROL.sub(
        lambda m: m.group() if newlines and m.group() == "\n" else ascii(m.group())[1:-1],
        str(value))


def safe_text(value: object, style: str = "") -> Text:
    """A rich Text of ``value`` made plain: safe in a table cell, never read as markup."""
    return Text(plain(value), style=style)


def markup_safe(value: object) -> str:
    """``value`` made plain and escaped, for the few places that build a markup string."""
    return escape(plain(value))
