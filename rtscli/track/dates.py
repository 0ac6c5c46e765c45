"""The date of a slump map: from ``--dates``, from a date field, or from a scene or file name.

Imagery dates are written many ways in file and scene names: ISO ``2019-07-15``, ``2019_07_15``,
Sentinel-2 and Landsat ``20190715`` (``..._20190715T191919_...``), PlanetScope ``20190715_183212``,
or only the year. :func:`find_date` reads them all; a year alone is taken as 1 July of that year
(logged, since growth rates per year then carry up to half a year of error). ``created`` in an
``rts predict`` output is when the map was made, not when the imagery was taken, so it is never used.
"""

from __future__ import annotations

import re
from datetime import date

#: full dates first (with separators, then 8 digits not part of a longer number), then a year alone
_FULL = [re.compile(r"(?<!\d)((?:19|20)\d\d)[-_.](\d\d)[-_.](\d\d)(?!\d)"),
         re.compile(r"(?<!\d)((?:19|20)\d\d)(\d\d)(\d\d)(?!\d)")]
_YEAR = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")


def find_date(text: str) -> tuple[date, bool] | None:
    """The first valid imagery date in ``text`` (a scene or file name), and whether it was only a year.

    Returns ``(date, year_only)`` or None. Eight digits count only when they form a valid calendar
    date (``20190715``), so tile ids and counters are not read as dates. A year alone gives 1 July.
    """
    for pattern in _FULL:
        for m in pattern.finditer(text):
            try:
                return date(int(m.group(1)), int(m.group(2)), int(m.group(3))), False
            except ValueError:
                continue
    m = _YEAR.search(text)
    if m:
        return date(int(m.group(1)), 7, 1), True
    return None


def parse_date(value) -> date | None:
    """One date from a field value or an option: a ``date``/``datetime``/pandas Timestamp, ``YYYY-MM-DD``
    (time part ignored), ``YYYYMMDD``, a year, or an ARTS ``BaseMapDate`` range ``"2020-07-05,2020-08-20"``
    (its middle day). None for an empty value; ``ValueError`` for text that holds no date."""
    import datetime as dt

    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, (int, float)) and 1900 <= int(value) <= 2100 and float(value) == int(value):
        return date(int(value), 7, 1)
    text = str(value).strip()
    if not text:
        return None
    if "," in text:  # an ARTS BaseMapDate range: its middle
        ends = [parse_date(t) for t in text.split(",") if t.strip()]
        ends = [d for d in ends if d is not None]
        if not ends:
            raise ValueError(f"no date in {text!r}")
        lo, hi = min(ends), max(ends)
        return lo + (hi - lo) / 2
    found = find_date(text)
    if found is None:
        raise ValueError(f"no date in {text!r}")
    return found[0]


def years_between(a: date, b: date) -> float:
    """(b - a) in years of 365.25 days."""
    return (b - a).days / 365.25
