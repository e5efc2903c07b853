"""Query statistics: normalized statements with count, total/average/max time and rows."""

from __future__ import annotations

import re
import threading
from typing import Any

__all__ = ["QueryStats", "normalize"]

#: One pass over the lexical pieces whose contents vary between runs of one statement:
#: comments (sqlcommenter's trace ids), string constants (standard, E'' with backslash
#: escapes, B''/X''/N''/U&''), dollar quotes, and numbers. Quoted identifiers are matched
#: only so that a quote or digit inside one is left alone. A prefix or a dollar quote
#: counts only where a word does not go on (ELSE'x' is ELSE and 'x'; c$1$ is a name).
#: An unterminated comment or dollar quote takes the rest of the text: searching for
#: its end again from every later opener would take quadratic time.
_PIECE = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|(?P<ident>"(?:[^"]|"")*")"""
    r"""|(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'"""
    r"""|(?:(?<![\w$])(?:[BbXxNn]|[Uu]&))?'(?:[^']|'')*'"""
    r"""|(?<![\w$])\$(?P<tag>(?:[A-Za-z_][A-Za-z_0-9]*)?)\$.*?(?:\$(?P=tag)\$|\Z)"""
    # (not a column position: ORDER BY 1 and ORDER BY 2 sort differently)
    r"""|(?<![\w.$"])(?<![Bb][Yy] )-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w"])""",
    re.DOTALL,
)
_PLACEHOLDER = r"(?:\?|%s|%\(\w+\)s|\$\d+|(?i:default|null|true|false))"
_LIST = re.compile(r"\(\s*(?:" + _PLACEHOLDER + r"\s*,\s*)*" + _PLACEHOLDER + r"\s*\)")
_ROWS = re.compile(r"\(\.\.\.\)(?:\s*,\s*\(\.\.\.\))+")
_SPACE = re.compile(r"\s+")

#: Longer shapes are cut here (and end in "…"): statements that differ only past this
#: point are counted as one, and no shape holds megabytes.
SHAPE_CHARS = 2000

#: The raw-text caches below hold at most this many characters each (per pool), however
#: long the statements (execute_values() sends each batch as new text of any length).
_CACHED_CHARS = 4_000_000
#: ... and no text longer than this: a few giant batches must not push every hot
#: statement out (such texts are normalized at each run; they are rarely sent twice).
_CACHED_TEXT_CHARS = _CACHED_CHARS // 16


def _piece(match: re.Match[str]) -> str:
    kind = match.lastgroup  # (None for a string or a number)
    if kind == "ident":
        return match.group()
    return " " if kind == "comment" else "?"


def normalize(sql: str) -> str:
    """One shape per statement: comments go, literals and parameters become ``?``, a
    parenthesised list of them (``IN (%s, %s, %s)``, a VALUES row, DEFAULT and NULL
    included) becomes ``(...)``, and several such rows one.
    """
    sql = _PIECE.sub(_piece, sql)
    sql = _LIST.sub("(...)", sql)
    sql = _ROWS.sub("(...)", sql)
    sql = _SPACE.sub(" ", sql).strip()
    return sql if len(sql) <= SHAPE_CHARS else sql[: SHAPE_CHARS - 1] + "…"


class QueryStats:
    """Per-pool statistics, bounded: past ``max_statements`` shapes the rarest tenth is
    evicted (counted in ``evictions``), so memory stays flat whatever the workload."""

    def __init__(self, max_statements: int = 1000) -> None:
        self.max_statements = max_statements
        self._lock = threading.Lock()
        # shape -> [count, total seconds, max seconds, rows]
        self._entries: dict[str, list[Any]] = {}
        # raw SQL -> its shape's entry: Django sends the same strings again and again, and
        # one lookup of the string is all a repeated statement costs. Cleared with every
        # eviction, so it never points at an evicted entry. Never rebound: the C query
        # timer (tracker.py) holds this dict and reads it without the lock.
        self.by_sql: dict[Any, list[Any]] = {}
        # raw SQL -> shape, to spare normalize() after an eviction cleared by_sql
        self._shapes: dict[Any, str] = {}
        # characters of raw SQL in by_sql and _shapes: each is cleared past _CACHED_CHARS
        self._by_sql_chars, self._shapes_chars = [0], [0]
        self.evictions = 0

    def add(self, sql: Any, seconds: float, rows: int) -> None:
        if rows < 0:
            rows = 0
        lock = self._lock
        lock.acquire()  # (every query comes here: cheaper than "with")
        try:
            entry = self.by_sql.get(sql)  # str or bytes: both hash
            if entry is None:
                entry = self._entry_for_new_text(sql)
            entry[0] += 1
            entry[1] += seconds
            if seconds > entry[2]:
                entry[2] = seconds
            entry[3] += rows
        finally:
            lock.release()

    def add_fetch(self, sql: Any, seconds: float, rows: int, run_seconds: float) -> None:
        """A named cursor's FETCH: its time and rows go to the statement that declared the
        cursor, not a run of its own; ``run_seconds`` (the fetches so far) may be its max."""
        with self._lock:
            entry = self.by_sql.get(sql)
            if entry is None:
                entry = self._entry_for_new_text(sql)
            entry[1] += seconds
            if run_seconds > entry[2]:
                entry[2] = run_seconds
            if rows > 0:
                entry[3] += rows

    def entry_for(self, sql: Any) -> list[Any]:
        """The entry that counts ``sql``, made if its shape is new. For the C query timer,
        which updates entries itself (see _querytimer.c) and comes here for text it has
        not found in ``by_sql``."""
        with self._lock:
            entry = self.by_sql.get(sql)
            return entry if entry is not None else self._entry_for_new_text(sql)

    def _entry_for_new_text(self, sql: Any) -> list[Any]:
        """The entry of SQL text not seen since the last eviction, made if its shape is new.
        Lock held: normalize() runs under it, but only for such text."""
        shape = self._shapes.get(sql)
        if shape is None:
            text = sql
            if not isinstance(text, str):
                text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            shape = normalize(text)
            self._remember(self._shapes, self._shapes_chars, sql, shape)
        entry = self._entries.get(shape)
        if entry is None:
            if len(self._entries) >= self.max_statements:
                self._evict()
            # [count, total seconds, max seconds, rows]: add() counts this run
            entry = self._entries[shape] = [0, 0.0, 0.0, 0]
        self._remember(self.by_sql, self._by_sql_chars, sql, entry)
        return entry

    def _remember(self, cache: dict[Any, Any], chars: list[int], sql: Any, value: Any) -> None:
        """``cache[sql] = value`` in one of the raw-text caches, within its bounds (cleared
        when full; ``chars``: the characters it holds)."""
        size = len(sql)
        if size > _CACHED_TEXT_CHARS:
            return
        if len(cache) >= 4 * self.max_statements or chars[0] + size > _CACHED_CHARS:
            cache.clear()
            chars[0] = 0
        cache[sql] = value
        chars[0] += size

    def _clear_by_sql(self) -> None:
        self.by_sql.clear()
        self._by_sql_chars[0] = 0

    def _evict(self) -> None:
        rarest = sorted(self._entries.items(), key=lambda item: item[1][0])
        drop = max(1, len(rarest) // 10)
        for shape, _ in rarest[:drop]:
            del self._entries[shape]
        self._clear_by_sql()  # it may point at an evicted entry
        self.evictions += drop

    def top(self, n: int = 10, order_by: str = "count") -> list[dict[str, Any]]:
        """The ``n`` most common statements (or by ``total_ms``, ``avg_ms``, ``max_ms``)."""
        keys = {
            "count": lambda e: e[0],
            "total_ms": lambda e: e[1],
            "avg_ms": lambda e: e[1] / e[0],
            "max_ms": lambda e: e[2],
        }
        if order_by not in keys:
            raise ValueError(f"order_by must be one of {', '.join(keys)}, not {order_by!r}")
        with self._lock:
            # (count 0: an entry the C query timer made and has not counted into yet)
            items = [(shape, list(e)) for shape, e in self._entries.items() if e[0] > 0]
        items.sort(key=lambda item: keys[order_by](item[1]), reverse=True)
        return [
            {
                "sql": shape,
                "count": count,
                "total_ms": total * 1000,
                "avg_ms": total * 1000 / count,
                "max_ms": longest * 1000,
                "rows": rows,
            }
            for shape, (count, total, longest, rows) in items[:n]
        ]

    def after_fork(self) -> None:
        # Another thread may have held the lock at the fork: the child's copy stays locked.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._clear_by_sql()
            self.evictions = 0
