"""Backend option parsing: options come as Python values or as the text `-o key=value` gives."""
from __future__ import annotations

from capfan import errors
from capfan.ring import parse_size

_TRUE = {"1", "yes", "true", "on", "y"}
_FALSE = {"0", "no", "false", "off", "n"}


def parse_bool(kind: str, name: str, value) -> bool:
    """True/False from a bool, 0/1 or text like yes/no/on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise errors.SourceError(f"{kind} option {name}={value!r}: expected yes or no")


def parse_int(kind: str, name: str, value, lo: int, hi: int, size: bool = False) -> int:
    """An integer option (a size like 4M when size=True) within [lo, hi]."""
    try:
        n = parse_size(value) if size else int(str(value), 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise errors.SourceError(f"{kind} option {name}={value!r}: expected "
                                 f"{'a size like 4096 or 1M' if size else 'an integer'}") from None
    if not lo <= n <= hi:
        raise errors.SourceError(f"{kind} option {name}={value!r}: must be between {lo} and {hi}")
    return n


def parse_choice(kind: str, name: str, value, table: dict):
    """One of the table's keys (case-insensitive) mapped to its value."""
    key = str(value).strip().lower()
    if key not in table:
        raise errors.SourceError(f"{kind} option {name}={value!r}: choose one of {', '.join(table)}")
    return table[key]
