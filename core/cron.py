"""Standard five-field crontab expressions for APScheduler 3, whose day-of-week numbers are not crontab's.

In crontab, day-of-week 0 (and 7) is Sunday and 1-5 is Monday to Friday. APScheduler 3.11's
`CronTrigger.from_crontab` passes the numbers through to its own scale, where 0 is Monday: the
documented `0 8 * * 1-5` fired Tuesday to Saturday (found by a black-box review, confirmed with
`get_next_fire_time`). Here the day-of-week field is expanded with crontab's meaning and handed to
APScheduler as day names, which both read the same way.

Day of the month and day of the week together: APScheduler fires only on a day both match, crontab on one
either matches when both are restricted. `crontab_trigger` follows crontab (see `_either_day_matches`).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: How far `WallClockCronTrigger` steps past a stuck fire time, a minute (crontab's resolution) at a time, so no
#: fire time is stepped over: well past the longest repeated hour anywhere (2 h). Once a year, ~50 us a step.
_STEP = timedelta(minutes=1)
_MAX_STEPS = 6 * 60
#: The longest jump forward of any zone's clocks (Antarctica/Troll's, 2 h): how far back a fire time in the hour
#: they skip is looked for.
_LONGEST_GAP = timedelta(hours=2)


class WallClockCronTrigger(CronTrigger):
    """A CronTrigger that fires once per local wall-clock time and always moves forward.

    At a daylight-saving fall-back, APScheduler 3.11 on a zoneinfo time zone gets stuck: asked for the time
    after the repeated hour's second occurrence of a fire time, it answers that same time again, for ever
    (agronholm/apscheduler#1021). A cron firing in the repeated hour (`0 * * * *`, or `30 2 * * *` in Berlin)
    ran twice, once per occurrence, and then `missed_briefing`, and APScheduler's own loop over run times,
    spun without end inside the event loop: every worker stopped answering, /health included (found by a
    review). Here the second occurrence of a repeated wall time is skipped, as crontab does for fixed times,
    and a fire time not after the previous one is stepped past.
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is None and self._clocks_went_forward_before(now):
            # A fire time in the hour the clocks skipped (02:30 in Berlin in spring) is due an hour on (03:30 CEST),
            # but asked from 03:10 APScheduler looks for hour 2 from 03:10 and answers the next day: a worker
            # started (or a catch-up asked) between the jump and that time skipped the day's briefing (found by a
            # review). So the fire times are walked from before the jump, to the first one not before `now`.
            # Compared in UTC: within one zone Python compares wall times, and the skipped 02:30 is before 03:10.
            due = self._forward(None, now.astimezone(UTC) - _LONGEST_GAP)
            while due is not None and due.astimezone(UTC) < now.astimezone(UTC):
                due = self._forward(due, now)
            return due
        return self._forward(previous_fire_time, now)

    def _clocks_went_forward_before(self, now: datetime) -> bool:
        before = (now.astimezone(UTC) - _LONGEST_GAP).astimezone(self.timezone)
        offset, earlier = now.astimezone(self.timezone).utcoffset(), before.utcoffset()
        return offset is not None and earlier is not None and earlier < offset

    def _forward(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        candidate = self._stepped(previous_fire_time, now)
        if candidate is None:
            return None
        since = now if previous_fire_time is None else min(now, previous_fire_time + timedelta(microseconds=1))
        return self._in_midnight_gap(since, candidate) or candidate

    def _in_midnight_gap(self, since: datetime, candidate: datetime) -> datetime | None:
        """A fire time around a jump forward of the clocks that APScheduler stepped over, before `candidate`.

        Where the clocks skip the hour after midnight (Chile, Cuba, Egypt, Lebanon, Paraguay), APScheduler moving to
        the next day lands on 00:00, which does not exist, reads it as 01:00 and looks for hour 0 from there: `0 0 * *
        *` in America/Santiago skipped 6 September 2026 altogether, where 02:30 in Berlin fires an hour on, as
        documented (found by a review). So each day up to `candidate` whose offset grows is asked again in the
        offset the clocks had before the jump, where the skipped wall times exist; one that does not exist in
        TIMEZONE is the answer, at that offset, which is an hour (the jump) on.

        Asked from before a jump at 02:00 (Berlin, New York), APScheduler also computes the next day's 00:xx in
        the offset before the jump, an hour late, so past hour 0, and answers the day after: `0 0 * * *` in Berlin
        had no firing on Monday 30 March 2026 (found by a review). So such a day is also asked again from the
        moment of the jump, in the offset after it, where APScheduler's steps meet no change of offset.
        """
        start, end = since.astimezone(UTC), candidate.astimezone(UTC)
        while start < end:
            step = min(start + timedelta(days=1), end)
            before, after = start.astimezone(self.timezone).utcoffset(), step.astimezone(self.timezone).utcoffset()
            if before is not None and after is not None and after > before:
                fixed = copy.copy(self)
                fixed.timezone = timezone(before)
                due = CronTrigger.get_next_fire_time(fixed, None, start.astimezone(fixed.timezone))
                found = []
                if due is not None and due.astimezone(UTC) < end and _skipped(due.replace(tzinfo=None), self.timezone):
                    found.append(due.astimezone(self.timezone))
                jumped = CronTrigger.get_next_fire_time(self, None, self._jump(start, step).astimezone(self.timezone))
                if jumped is not None and jumped.astimezone(UTC) < end and not _second_occurrence(jumped):
                    found.append(jumped)
                if found:  # both can be due ("30 0" skipped to 01:30, "15 1" at 01:15): the earlier first
                    return min(found, key=lambda moment: moment.astimezone(UTC))
            start = step
        return None

    def _jump(self, start: datetime, end: datetime) -> datetime:
        """The first moment, to the second, of `(start, end]` (UTC) in the offset `end` has: where the clocks jumped."""
        offset = end.astimezone(self.timezone).utcoffset()
        while end - start > timedelta(seconds=1):
            middle = start + (end - start) / 2
            if middle.astimezone(self.timezone).utcoffset() == offset:
                end = middle
            else:
                start = middle
        return end

    def _stepped(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        candidate = super().get_next_fire_time(previous_fire_time, now)
        stuck = candidate
        for _ in range(_MAX_STEPS):
            if candidate is None or not (
                _second_occurrence(candidate) or (previous_fire_time is not None and candidate <= previous_fire_time)
            ):
                return candidate
            # Asked afresh from a minute on (with a previous fire time, APScheduler never looks past it + 1 us), in
            # real time: `stuck + 1 min` on the wall clock drops the fold, so from a repeated hour's second
            # occurrence it went back to the first, and a fire time an hour before `now` was answered ("*/15" asked
            # at 02:50 CEST on the fall-back day answered 02:15 CEST, and the start-up catch-up ran a briefing
            # from 02:45, past its grace).
            stuck = (stuck.astimezone(UTC) + _STEP).astimezone(self.timezone)
            candidate = super().get_next_fire_time(None, stuck)
        return None  # never seen; better no firing than a spinning event loop


def _skipped(wall: datetime, zone: tzinfo) -> bool:
    """Whether wall-clock time `wall` (naive) never happens in `zone`: it does not survive a round trip through UTC."""
    return wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall


def _second_occurrence(moment: datetime) -> bool:
    """Whether `moment` is the second time its wall-clock time happens (fold=1 in a repeated hour)."""
    return moment.fold == 1 and moment.replace(fold=0).utcoffset() != moment.utcoffset()


class EitherDayCronTrigger(OrTrigger):
    """The earliest next fire time of its cron triggers: crontab's "either day field matches" (`crontab_trigger`).

    APScheduler's `OrTrigger`, but comparing the fire times in real time. `OrTrigger` takes `min()` of them, and
    Python compares two datetimes of one zone by their wall-clock reading, offset ignored: a fire time in the hour
    the clocks skip reads 02:30+01:00 (03:30 CEST), which is after 03:00+02:00 yet the smaller: `min()` could
    answer the later of two fire times, and the earlier would be passed over.

    Otherwise as `OrTrigger`, which suits crontab's two halves (`crontab_trigger`): they share minute, hour and
    month. Both are handed the same previous fire time, which a cron trigger takes as "after this": one the other
    half answered lies on a day this half does not match, where it has no fire time to skip, or on a day both
    match, where both halves, asked alike, answer alike, as one trigger would (its daylight-saving handling
    included). So a time both answer (the 1st that is also a Monday) is one fire time, fired once. Halves with
    different times of day would not be safe: `30 2` handed `0 3`'s 03:00 CEST on the day 02:30 is skipped looks
    from 03:00 for hour 2, and skips its 03:30.
    """

    __slots__ = ()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire_times = [trigger.get_next_fire_time(previous_fire_time, now) for trigger in self.triggers]
        due = [moment for moment in fire_times if moment is not None]
        if not due:
            return None
        return self._apply_jitter(min(due, key=lambda moment: moment.astimezone(UTC)), self.jitter, now)


def crontab_trigger(expression: str, timezone: tzinfo | str) -> BaseTrigger:
    """`minute hour day-of-month month day-of-week`, read as crontab reads it; ValueError when it is not one.

    A `WallClockCronTrigger`, or, when both day fields are restricted, an `EitherDayCronTrigger` of two of them: one
    for the days of the month, one for the days of the week (`_either_day_matches`).
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"a crontab expression has five fields, not {len(fields)}")
    minute, hour, day, month, day_of_week = fields

    def on(day: str, day_of_week: str) -> WallClockCronTrigger:
        return WallClockCronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=crontab_days(day_of_week), timezone=timezone
        )

    if not _either_day_matches(day, day_of_week):
        return on(day, day_of_week)  # a day both fields match, as APScheduler reads them
    days_of_month, days_of_week = on(day, "*"), on("*", day_of_week)
    # A day of the month its months never have (`0 8 31 2 1`: 31 February, or Mondays in February) is never a
    # fire time: crontab fires on the days of the week alone. Kept as a half, it was asked at every fire time and
    # walked to year 9999 to answer None, ~0.15 s each, four times a briefing, in the event loop (found by a
    # review). Asked once here; a day that exists comes back at once.
    if days_of_month.get_next_fire_time(None, datetime(2000, 1, 1, tzinfo=UTC)) is None:
        return days_of_week
    return EitherDayCronTrigger([days_of_month, days_of_week])


def _either_day_matches(day: str, day_of_week: str) -> bool:
    """Whether crontab fires on a day either day field matches, rather than only on one both match.

    crontab(5): "If both fields are restricted (i.e., do not contain the "*" character), the command will be run
    when either field matches the current time. For example, "30 4 1,15 * 5" would cause a command to be run at
    4:30 am on the 1st and 15th of each month, plus every Friday." Restricted means: not starting with `*`. Vixie
    cron and cronie set DOM_STAR / DOW_STAR when a field's first character is `*` (`load_entry`, src/entry.c), and
    `find_jobs` (src/cron.c) matches a day with `(DOM_STAR || DOW_STAR) ? dow && dom : dow || dom`. So `*/2` counts
    as unrestricted: `0 8 */2 * 1-5` is an odd day that is also a weekday, `0 8 1,15 * 1` the 1st, the 15th and
    every Monday. Until this rule was followed, an expression with both fields restricted was refused.

    The OR is an `EitherDayCronTrigger` of two `WallClockCronTrigger`s, one per day field.
    """
    return not day.startswith("*") and not day_of_week.startswith("*")


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
