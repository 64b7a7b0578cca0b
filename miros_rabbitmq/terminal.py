"""Text from the network, made safe to print on a terminal.

Chart names, trace lines, scribbles and addresses come from other machines.
Printed as they are, a control sequence in them (ESC ] ... BEL to retitle
the window or write the clipboard with OSC 52, ESC [ 2J to clear the screen,
a carriage return to overwrite the line before) would act on the terminal
of whoever watches. :func:`printable` shows every control character as a
visible escape (``\\x1b``, ``\\u202e``) instead.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls (newline and tab included: one record is one line), DEL, C1
# controls, and the Unicode bidi/format overrides that reorder what is shown
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``str(text)`` with every control character shown as an escape."""
    return _CONTROLS.sub(_escape, str(text))
