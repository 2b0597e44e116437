"""Standard five-field crontab expressions for APScheduler 3, whose day-of-week numbers are not crontab's.

In crontab, day-of-week 0 (and 7) is Sunday and 1-5 is Monday to Friday. APScheduler 3.11's
`CronTrigger.from_crontab` passes the numbers through to its own scale, where 0 is Monday: the
documented `0 8 * * 1-5` fired Tuesday to Saturday (found by a black-box review, confirmed with
`get_next_fire_time`). Here the day-of-week field is expanded with crontab's meaning and handed to
APScheduler as day names, which both read the same way.
"""

from __future__ import annotations

from datetime import tzinfo

from apscheduler.triggers.cron import CronTrigger

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_trigger(expression: str, timezone: tzinfo | str) -> CronTrigger:
    """`minute hour day-of-month month day-of-week`, read as crontab reads it; ValueError when it is not one."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"a crontab expression has five fields, not {len(fields)}")
    minute, hour, day, month, day_of_week = fields
    if day != "*" and day_of_week != "*":
        # crontab fires when either matches ("the 13th, and every Friday"); APScheduler only when both do
        # ("Friday the 13th"). Refused rather than read one way while it means the other.
        raise ValueError(
            "give a day of the month or a day of the week, not both (crontab would fire on either, "
            "this scheduler only on both)"
        )
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=crontab_days(day_of_week), timezone=timezone
    )


def crontab_days(field: str) -> str:
    """A crontab day-of-week field as APScheduler day names: `1-5` -> `mon,tue,wed,thu,fri`, `0` -> `sun`."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        base, slash, step_text = part.partition("/")
        step = int(step_text) if slash else 1
        if step < 1:
            raise ValueError(f"day-of-week step must be at least 1 in {part!r}")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            start, end = base.split("-", 1)
            first, last = _day(start), _day(end)
        else:
            first = _day(base)
            last = 7 if slash else first  # `1/2`: from Monday, every other day
        if last < first:
            raise ValueError(f"day-of-week range {base!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))  # 7 is Sunday too
    return ",".join(DAY_NAMES[day] for day in sorted(days))


def _day(token: str) -> int:
    token = token.strip().lower()
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token in DAY_NAMES:
        return DAY_NAMES.index(token)
    raise ValueError(f"{token!r} is not a day of the week (0-7, 0 and 7 being Sunday, or sun-sat)")
