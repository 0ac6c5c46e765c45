"""The date of a slump map: from ``--dates``, from a date field, or from a scene, file or folder name.

Imagery dates are written many ways in file and scene names: ISO ``2019-07-15``, ``2019_07_15``,
Sentinel-2 and Landsat ``20190715`` (``..._20190715T191919_...``), PlanetScope ``20190715_183212``,
or only the year. :func:`find_date` reads them all; a year alone is taken as 1 July of that year
(logged, since growth rates per year then carry up to half a year of error). ``created`` in an
``rts predict`` output is when the map was made, not when the imagery was taken, so it is never used.

Values of a date field and of ``--dates`` are read strictly by :func:`parse_date`: ``YYYY-MM-DD`` (also
with ``/``, ``_`` or ``.``, and with a time part), ``YYYYMMDD``, ``DD.MM.YYYY``, a year alone, or an ARTS
``BaseMapDate`` range. Anything else, an impossible day (``2021-13-45``) or a day-month order that cannot
be told (``08/02/2021``) is an error, never a guess.
"""

from __future__ import annotations

import functools
import logging
import re
from datetime import date
from typing import Any

log = logging.getLogger("rtscli")

#: full dates in names (with separators, then 8 digits not part of a longer number), then a year alone
_FULL = [re.compile(r"(?<!\d)((?:19|20)\d\d)[-_.](\d\d)[-_.](\d\d)(?!\d)"),
         re.compile(r"(?<!\d)((?:19|20)\d\d)(\d\d)(\d\d)(?!\d)")]
_YEAR = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")
#: whole values: year first (any of - / _ . between, optional time), day first with dots, 8 digits, a year
_YMD = re.compile(r"^((?:19|20)\d\d)[-/_.](\d{1,2})[-/_.](\d{1,2})(?:[T ].*)?$")
_DMY = re.compile(r"^(\d{1,2})\.(\d{1,2})\.((?:19|20)\d\d)$")
_COMPACT = re.compile(r"^((?:19|20)\d\d)(\d\d)(\d\d)(?:T.*)?$")
_YEAR_ONLY = re.compile(r"^((?:19|20)\d\d)(?:\.0)?$")


def _in_name(text: str) -> tuple[list[date], set[int]]:
    """The full dates in ``text`` (in the order they stand) and the years that stand alone in it."""
    full = []
    for pattern in _FULL:
        for m in pattern.finditer(text):
            try:
                full.append((m.start(), date(int(m.group(1)), int(m.group(2)), int(m.group(3)))))
            except ValueError:
                continue
    full.sort()
    days = list(dict.fromkeys(d for _, d in full))
    years = {int(m.group(1)) for m in _YEAR.finditer(text)} - {d.year for d in days}
    return days, years


def find_date(text: str) -> tuple[date, bool] | None:
    """The imagery date in ``text`` (a scene, file or folder name), and whether it was only a year.

    Returns ``(date, year_only)`` or None. Eight digits count only when they form a valid calendar
    date (``20190715``), so tile ids and counters are not read as dates. A year alone gives 1 July.
    When the name holds several different dates (``peel_2019_edited_2024-03-05``), the first full date
    is taken and a warning says so.
    """
    days, years = _in_name(text)
    if days:
        if len(days) > 1 or years:
            log.warning("%s holds several dates (%s); %s is taken: pass --dates if that is wrong", text,
                        ", ".join(sorted({str(d) for d in days} | {str(y) for y in years})), days[0].isoformat())
        return days[0], False
    if years:
        if len(years) > 1:
            log.warning("%s holds several years (%s); %d is taken: pass --dates if that is wrong", text,
                        ", ".join(map(str, sorted(years))), min(years))
        return date(min(years), 7, 1), True
    return None


def dates_in(text: str) -> list[str]:
    """Every date ``text`` (a name) holds, as written: full dates as ``YYYY-MM-DD``, then years that stand alone.
    :func:`find_date` takes one of them; ``--dates`` is compared with all (``peel_2019_edited_2024-03-05``
    agrees with 2019-07-15 and with 2024-03-05)."""
    days, years = _in_name(text)
    return [d.isoformat() for d in days] + [str(y) for y in sorted(years)]


def parse_date(value: Any) -> date | None:
    """One date from a field value or an option (see the module docstring). A ``date``/``datetime``/pandas
    Timestamp passes through; an ARTS ``BaseMapDate`` range ``"2020-07-05,2020-08-20"`` gives its middle day.
    None for an empty value; ``ValueError`` (with the reason) for anything else."""
    import datetime as dt

    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    if not text or text.lower() in ("nan", "none", "nat", "null"):
        return None
    if "," in text:  # an ARTS BaseMapDate range: its middle
        parsed = [parse_date(t) for t in text.split(",") if t.strip()]
        ends = [d for d in parsed if d is not None]
        if not ends:
            raise ValueError(f"no date in {text!r}")
        if len(ends) == 2 and ends[1] < ends[0]:
            raise ValueError(f"the range {text!r} ends before it starts")
        return min(ends) + (max(ends) - min(ends)) / 2
    for pattern, order in ((_YMD, (1, 2, 3)), (_COMPACT, (1, 2, 3)), (_DMY, (3, 2, 1))):
        m = pattern.match(text)
        if m:
            y, mo, d = (int(m.group(i)) for i in order)
            try:
                return date(y, mo, d)
            except ValueError:
                raise ValueError(f"{text!r} is not a calendar date") from None
    m = _YEAR_ONLY.match(text)
    if m:
        _year_note(m.group(1))
        return date(int(m.group(1)), 7, 1)
    raise ValueError(f"cannot read {text!r} as a date (use YYYY-MM-DD)")


@functools.lru_cache(maxsize=None)
def _year_note(year: str) -> None:
    """Say once per year that a year alone is taken as 1 July."""
    log.info("a year alone (%s) is taken as 1 July of it: rates per year carry up to half a year of error", year)


def date_span(text: str) -> tuple[date, date]:
    """The days a date as a map writes it may mean: ``(d, d)`` for one day, a year alone its whole year, an ARTS
    ``BaseMapDate`` range its two ends. ``ValueError`` for text that holds no date."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    ends: list[date] = []
    for t in parts:
        m = _YEAR_ONLY.match(t)
        if m:
            ends += [date(int(m.group(1)), 1, 1), date(int(m.group(1)), 12, 31)]
            continue
        d = parse_date(t)
        if d is not None:
            ends.append(d)
    if not ends:
        raise ValueError(f"no date in {text!r}")
    return min(ends), max(ends)


def years_between(a: date, b: date) -> float:
    """(b - a) in years of 365.25 days."""
    return (b - a).days / 365.25
