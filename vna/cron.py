"""Cron expressions, as crontab(5) reads them: windows for replication, times for jobs.

A window is open during every minute whose hour, day-of-month, month and
day-of-week match the expression. The minute field is ignored, so windows are
whole hours: `0 20-6 * * *` and `* 20-6 * * *` both mean 20:00 to 06:59.
Ranges may wrap (`20-6`, `fri-mon`); days of the week count from 0 = Sunday
as in crontab(5). APScheduler's CronTrigger does the matching.
"""

from __future__ import annotations

import datetime as dt

from apscheduler.triggers.cron import CronTrigger

_BOUNDS = {"hour": (0, 23), "day": (1, 31), "month": (1, 12)}
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class CronWindow:
    """A parsed window; `ValueError` with a readable message if the expression is wrong."""

    def __init__(self, expression: str, timezone: dt.tzinfo | None = None) -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(
                f"{expression!r}: a cron expression has 5 fields (minute hour day month weekday)"
            )
        _minute, hour, day, month, dow = fields
        self.expression = expression
        self.timezone = timezone or dt.datetime.now().astimezone().tzinfo
        try:
            self._trigger = CronTrigger(
                minute="*",
                hour=_unwrap(hour, "hour"),
                day=_unwrap(day, "day"),
                month=_unwrap(month, "month"),
                day_of_week=_day_names(dow),
                timezone=self.timezone,
            )
        except ValueError as exc:
            raise ValueError(f"{expression!r}: {exc}") from None

    def is_open(self, now: dt.datetime | None = None) -> bool:
        """True while the window is open."""
        moment = (now or dt.datetime.now(self.timezone)).astimezone(self.timezone)
        minute = moment.replace(second=0, microsecond=0)
        fire = self._trigger.get_next_fire_time(None, minute)
        return fire is not None and fire == minute

    def next_open(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """When the window opens next (now, if it is open)."""
        moment = (now or dt.datetime.now(self.timezone)).astimezone(self.timezone)
        fire = self._trigger.get_next_fire_time(None, moment.replace(second=0, microsecond=0))
        return fire  # type: ignore[no-any-return]


def cron_trigger(expression: str, timezone: dt.tzinfo | None = None) -> CronTrigger:
    """When a scheduled job fires, from a 5-field crontab(5) expression.

    APScheduler's own `CronTrigger.from_crontab` counts weekdays from Monday = 0 and
    rejects wrapping ranges; an admin writes crontab, so the fields are translated
    here the same way as for windows. `ValueError` with a readable message if wrong.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expression!r}: a cron expression has 5 fields (minute hour day month weekday)"
        )
    minute, hour, day, month, dow = fields
    try:
        return CronTrigger(
            minute=minute,
            hour=_unwrap(hour, "hour"),
            day=_unwrap(day, "day"),
            month=_unwrap(month, "month"),
            day_of_week=_day_names(dow),
            timezone=timezone,  # None: APScheduler takes the machine's zone, DST included
        )
    except ValueError as exc:
        raise ValueError(f"{expression!r}: {exc}") from None


def _day_names(field: str) -> str:
    """A crontab(5) weekday field (0 or 7 = Sunday, names, ranges that may wrap, steps)
    as a list of names, which APScheduler reads unambiguously."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        rng, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else 1
        if rng == "*":
            start, stop = 0, 6
        else:
            a, sep, b = rng.partition("-")
            start = _day(a)
            stop = _day(b) if sep else start
            if sep and step_text == "" and _day(b) == start and b != a:
                stop = start + 6  # e.g. 0-7: the whole week
        span = 6 if rng == "*" else (stop - start) % 7
        days.update((start + k) % 7 for k in range(0, span + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days))


def _day(token: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    if token[:3] in _DAYS:
        return _DAYS.index(token[:3])
    raise ValueError(f"{token!r} is not a day of the week (0-7 or sun..sat)")


def _unwrap(field: str, name: str) -> str:
    """Split wrapping ranges (`20-6`) into two APScheduler understands (`20-23,0-6`)."""
    lo, hi = _BOUNDS[name]
    parts = []
    for part in field.split(","):
        a, sep, b = part.partition("-")
        if sep and "/" not in part:
            ia, ib = _index(a, name), _index(b, name)
            if ia is not None and ib is not None and ia > ib:
                parts.append(f"{a}-{_label(hi, name)}")
                parts.append(f"{_label(lo, name)}-{b}")
                continue
        parts.append(part)
    return ",".join(parts)


def _index(token: str, name: str) -> int | None:
    return int(token) if token.isdigit() else None


def _label(value: int, name: str) -> str:
    return str(value)
