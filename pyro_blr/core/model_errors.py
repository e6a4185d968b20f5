"""What a model raised, in one line a message can quote.

An error a model raises can have an empty message -- a bare ``assert`` is the common case (Pyro's
logistic-growth tutorial writes ``assert probs.shape == (T, L)``) -- so the first line of
``str(error)`` may not exist. :func:`describe_error` then names the source line that raised, which
is the reason a user needs to see.
"""

from __future__ import annotations

import traceback
from pathlib import Path

__all__ = ["describe_error"]


def describe_error(error: BaseException) -> str:
    """``"Type: first line of the message"``; for an empty message, the type and the source line
    that raised it (``"AssertionError at model.py:12: assert w.shape == ()"``).

    Pyro appends the trace's shapes to a model's ``ValueError`` and ``RuntimeError``; only the
    first non-blank line, the message itself, is kept.

    Example:
        >>> describe_error(ValueError("bad value\\n   Trace Shapes: ..."))
        'ValueError: bad value'
        >>> def model():
        ...     assert 1 == 2
        >>> try:
        ...     model()
        ... except AssertionError as error:
        ...     print(describe_error(error).split(" at ")[0], describe_error(error).split(": ")[-1])
        AssertionError assert 1 == 2
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name = type(error).__name__
    if lines:
        return f"{name}: {lines[0]}"
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return name
    frame = frames[-1]
    where = f"{name} at {Path(frame.filename).name}:{frame.lineno}"
    return f"{where}: {frame.line.strip()}" if frame.line else where
