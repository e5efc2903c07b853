"""Session hygiene: which statements may change session state, and the reset that undoes them."""

from __future__ import annotations

import re
import secrets

__all__ = ["DEALLOCATE_SQL", "RESET_SQL", "may_change_session", "may_prepare", "reseed_sql"]

#: What DISCARD ALL does, minus DEALLOCATE ALL and DISCARD PLANS so that the pool's own
#: prepared statements survive (PostgreSQL documents DISCARD ALL as this sequence).
#: DISCARD ALL itself cannot run in a multi-statement string; these can, so the whole
#: reset is one round trip.
RESET_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


def reseed_sql() -> str:
    """Part of every reset: random()'s generator seeded afresh. DISCARD ALL leaves it as a
    holder's setseed() put it (a new backend seeds it from a strong random source; this
    seed comes from one too)."""
    # setseed() takes a double in [-1, 1]: 53 random bits.
    return f"SELECT setseed({secrets.randbits(53) / 2**52 - 1!r})"


#: Added to the reset after a lease that may have prepared statements of its own: the
#: pool's statements (kept by RESET_SQL) are prepared again lazily, the user's must go.
DEALLOCATE_SQL = "DEALLOCATE ALL"

_PREPARE = re.compile(r"\b(?:prepare|deallocate|discard)\b", re.IGNORECASE)


def may_prepare(sql: str) -> bool:
    """True if ``sql`` may create or drop prepared statements (PREPARE, DEALLOCATE, DISCARD,
    also inside DO/EXECUTE): the return then deallocates them all, and the pool forgets its
    own, which are prepared again at their next use."""
    return _PREPARE.search(sql) is not None


#: Statements that begin with one of these words change only data or the current
#: transaction, unless they also match _RISKY below.
_SAFE_FIRST_WORDS = frozenset(
    "SELECT INSERT UPDATE DELETE WITH VALUES TABLE MERGE SHOW EXPLAIN COPY NOTIFY "
    "BEGIN START COMMIT END ROLLBACK ABORT SAVEPOINT RELEASE "
    "CREATE ALTER DROP TRUNCATE COMMENT GRANT REVOKE ANALYZE VACUUM REFRESH REINDEX CLUSTER "
    "CALL".split()
)
# (Not DO: its body is code that can build any statement at run time, EXECUTE 'SE'||'T ...'.)

#: Inside an otherwise safe statement: temporary objects (TEMP, pg_temp), session-level
#: advisory locks (the xact ones end with the transaction), GUCs through set_config() or
#: RESET, ROLE/AUTHORIZATION changes, LISTEN, cursors, prepared statements, and the
#: sequence functions whose values currval() and lastval() would show the next holder,
#: and setseed(), after which the next holder's random() would be predictable.
#: (A serial column's default calls nextval() unseen: see the README.)
_RISKY_WORDS = (
    r"\btemp(?:orary)?\b|\bpg_temp|advisory_lock|set_config|\breset\b"
    r"|\bset\s+(?:session\s+)?(?:role|authorization)|\blisten\b|\bdeclare\b|\bprepare\b"
    r"|\bnextval\b|\bsetval\b|\bsetseed\b"
    # built-ins that run a query string (query_to_xml('se'||'lect set_config(...)')) or
    # keep a named connection open in the session (dblink_connect)
    r"|query_to_xml|\bdblink"
    # a Unicode-escaped name (U&"\0073et_config") could spell any of the above
    r'|\bu&"'
)
#: A SET (inside DO bodies, say; followed by a space, a quote or a comment) that is not
#: SET LOCAL nor the "DO UPDATE SET" of an upsert as Django writes it. ("SET local.x = 1"
#: is a session-level custom setting of the class "local", not SET LOCAL.)
_RISKY = re.compile(
    _RISKY_WORDS + r"|(?<!\bdo update )\bset\b(?!\s+local\b(?!\s*\.))", re.IGNORECASE
)
#: In an UPDATE, "SET col = value" is the statement's own clause, not a GUC change.
_RISKY_IN_UPDATE = re.compile(_RISKY_WORDS, re.IGNORECASE)
#: A comment as the server reads it, as long as it holds no "/*": block comments nest in
#: PostgreSQL ("/* /* */ UPDATE */ SET ..." is a SET), and a "--" comment also ends at "\r".
#: Text with a nested or unterminated comment is never judged clean (see below).
_COMMENT = r"--[^\n\r]*|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/"
#: String literals, quoted identifiers and comments, read left to right as the server's
#: lexer does (a quote inside a comment opens nothing), removed before looking for a
#: second statement.
_QUOTED = re.compile(_COMMENT + r"|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_SECOND_STATEMENT = re.compile(r";\s*\S")
_FIRST_WORD = re.compile(r"\s*(?:(?:" + _COMMENT + r")\s*)*\(*\s*([A-Za-z]+)")


#: Every risky pattern above contains one of these (in lower case). Python's re tries
#: each alternative at each character; str.find() skips ahead: a multi-megabyte INSERT
#: from execute_values() is cleared in milliseconds instead of a fifth of a second.
#: (ASCII only: re's IGNORECASE also matches "ſ" for "s" where str.lower() does not, and
#: a server in a Turkish locale folds "İ" to "i": other text always goes to the regex.)
_RISKY_CORES = (
    "temp", "advisory_lock", "set", "listen", "declare", "prepare", "nextval", 'u&"',
    "query_to_xml", "dblink",
)  # fmt: skip


_verdicts: dict[str, bool] = {}
#: characters of SQL held in _verdicts (cleared past _VERDICT_CHARS or _VERDICT_COUNT)
_verdict_chars = [0]
_VERDICT_CHARS = 8_000_000
_VERDICT_COUNT = 20_000


def may_change_session(sql: str) -> bool:
    """may_change_session_uncached(), remembered per SQL string: applications send the
    same statements again and again, and a dict lookup is cheaper than the regexes."""
    verdict = _verdicts.get(sql)
    if verdict is None:
        verdict = may_change_session_uncached(sql)
        size = len(sql)
        if len(_verdicts) >= _VERDICT_COUNT or _verdict_chars[0] + size > _VERDICT_CHARS:
            _verdicts.clear()  # (a race with another thread's clear only miscounts a little)
            _verdict_chars[0] = 0
        _verdicts[sql] = verdict
        _verdict_chars[0] += size
    return verdict


def may_change_session_uncached(sql: str) -> bool:
    """True unless ``sql`` provably leaves session state (GUCs, role, temp tables, locks,
    LISTEN, cursors, prepared statements) as it was.

    The test is lexical and errs towards True: a false alarm costs one reset round trip,
    a miss would leak state. What it cannot see is a user function that changes session
    state from inside; pools that call such functions should use ``reset="always"``.
    """
    match = _FIRST_WORD.match(sql)
    if match is None:
        return True
    first = match.group(1).upper()
    if first not in _SAFE_FIRST_WORDS:
        return True
    lowered = sql.lower()
    if not sql.isascii() or any(core in lowered for core in _RISKY_CORES):
        risky = _RISKY_IN_UPDATE if first == "UPDATE" else _RISKY
        if risky.search(sql) is not None:
            return True
    if ";" not in sql and "/*" not in sql:
        return False
    if "\\" in sql and ";" in sql:
        # A backslash: E'\'' is one quote, which _QUOTED would read as the end of the
        # string, so what is quoted is not certain.
        return True
    unquoted = _QUOTED.sub("", sql)
    # A nested or unterminated comment; or "SELECT 1; RESET ROLE": only the first
    # statement was looked at above.
    return "/*" in unquoted or _SECOND_STATEMENT.search(unquoted) is not None
