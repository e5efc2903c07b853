"""Cheap stack capture: code objects and instruction offsets now, text only when asked."""

from __future__ import annotations

import linecache
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from types import CodeType, FrameType

__all__ = ["WALKER", "Stack", "capture", "capture_python", "format_stack", "frames"]

#: A captured stack, innermost frame first, flat: code object, instruction offset, code
#: object, instruction offset... (one sequence and no pair tuples: 20% cheaper to build,
#: and stacks are built on every lease; see frames()). The Python walk makes a list; the C
#: walk a tuple, the same one for the same frames at the same offsets, so a stack is never
#: to be changed in place. Holding code objects (not frames) keeps
#: no locals alive. Reading f_lasti is cheap where f_lineno decodes the line table
#: (measured: 5 us vs 14 us for 30 frames), so line numbers, file names and source lines
#: are worked out only when formatting.
Stack = Sequence["CodeType | int"]

_THIS_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

#: Frames from these places are hidden so that the first frame shown is the user's code.
DEFAULT_HIDDEN = (
    _THIS_PACKAGE,
    os.sep + "django" + os.sep,
    os.sep + "asgiref" + os.sep,
    os.sep + "psycopg2" + os.sep,
)


try:
    from . import _stackwalk  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler, CPython < 3.11...): the Python walk
    _stackwalk = None


class _StopAt:
    """Code objects where a walk up the stack may stop: everything above them is the
    framework's request machinery (the Django layer adds its handler's _get_response).
    Stopping there makes a stack taken in a view cost about a third of a full walk.

    Compared by identity: a code object does not cache its hash, and hashing one (its
    bytecode, constants and names) costs more than the rest of a frame's step.
    """

    def __init__(self) -> None:
        self.ids: set[int] = set()
        #: their names (strings cache their hash): most frames fail this cheaper test
        self.names: set[str] = set()
        self._codes: list[CodeType] = []  # keeps the ids valid

    def add(self, code: CodeType) -> None:
        if id(code) not in self.ids:
            self._codes.append(code)
            self.ids.add(id(code))
            self.names.add(code.co_name)
            if _stackwalk is not None:
                _stackwalk.set_stop_codes(tuple(self._codes))

    def update(self, codes: Iterable[CodeType]) -> None:
        for code in codes:
            self.add(code)

    def __contains__(self, code: object) -> bool:
        return id(code) in self.ids


STOP_AT = _StopAt()


def capture_python(skip: int = 1, limit: int = 64) -> Stack:
    """The caller's stack (``skip`` frames up), innermost first, at most ``limit`` frames,
    up to and including the first frame whose code is in STOP_AT.

    capture() is this, or the same walk in C (_stackwalk.c) where it was built."""
    frame: FrameType | None = sys._getframe(skip)
    stack: list[CodeType | int] = []
    append = stack.append
    stop_names, stop_ids = STOP_AT.names, STOP_AT.ids
    for _ in range(limit):  # (cheaper than counting in the loop)
        code = frame.f_code  # type: ignore[union-attr]
        append(code)
        append(frame.f_lasti)  # type: ignore[union-attr]
        if code.co_name in stop_names and id(code) in stop_ids:
            break
        frame = frame.f_back  # type: ignore[union-attr]
        if frame is None:
            break
    return stack


capture: Callable[..., Stack] = _stackwalk.capture if _stackwalk is not None else capture_python

#: Which walk capture() is (bench/ and the README's figures say which they measured).
WALKER = "C" if _stackwalk is not None else "Python"


def frames(stack: Stack) -> list[tuple[CodeType, int]]:
    """(code object, instruction offset) per frame of a captured stack, innermost first."""
    return list(zip(stack[0::2], stack[1::2], strict=True))  # type: ignore[arg-type]


def _lineno(code: CodeType, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno


def format_stack(
    stack: Stack, hidden: Sequence[str] = DEFAULT_HIDDEN, show_hidden: bool = False
) -> str:
    """Format outermost-first like a traceback; runs of hidden frames fold into one line."""
    lines: list[str] = []
    folded = 0
    for code, lasti in reversed(frames(stack)):
        if not show_hidden and _is_hidden(code.co_filename, hidden):
            folded += 1
            continue
        if folded:
            lines.append(f"  ... {folded} library frame{'s' if folded > 1 else ''} hidden\n")
            folded = 0
        lineno = _lineno(code, lasti)
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
        source = linecache.getline(code.co_filename, lineno).strip()
        if source:
            lines.append(f"    {source}\n")
    if folded:
        lines.append(f"  ... {folded} library frame{'s' if folded > 1 else ''} hidden\n")
    return "".join(lines)


def first_user_frame(stack: Stack, hidden: Iterable[str] = DEFAULT_HIDDEN) -> str:
    """``file:line in function`` of the innermost frame that is not hidden ('?' if none)."""
    hidden = tuple(hidden)
    for code, lasti in frames(stack):
        if not _is_hidden(code.co_filename, hidden):
            return f"{code.co_filename}:{_lineno(code, lasti)} in {code.co_name}"
    return "?"


_STDLIB = os.path.dirname(os.__file__) + os.sep


#: Pseudo-files of code typed at a prompt (Python's REPL, ``manage.py shell``'s console,
#: IPython): the user's own, where ``<frozen ...>`` and ``<string>`` are library code.
_TYPED = ("<stdin>", "<console>", "<python-input-", "<ipython-input-")


def _is_hidden(filename: str, hidden: Sequence[str]) -> bool:
    if filename.startswith(_STDLIB) and "-packages" not in filename:
        return True  # the standard library: threading, contextlib, socketserver...
    if filename.startswith("<"):
        return not filename.startswith(_TYPED)
    return any(part in filename for part in hidden)
