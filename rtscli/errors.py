"""User-facing errors.

A :class:`RtsError` is a problem with the user's input or settings. The CLI prints its message on
one line and exits with code 2, without a traceback (``rts --debug`` shows it). The message names
the file at fault and says how to fix it.
"""

from __future__ import annotations

from pathlib import Path


class RtsError(Exception):
    """An error the user can fix; the message is shown as is."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None) -> None:
        """The message, as one line: ``PATH: message -- fix``.

        Args:
            message: what is wrong (a trailing full stop is dropped).
            path: the file at fault, or None.
            fix: what the user can do about it, or None.
        """
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        parts.append(message.rstrip("."))
        text = " ".join(parts)
        if fix:
            text += f" -- {fix.rstrip('.')}"
        super().__init__(text.replace("\n", " "))
