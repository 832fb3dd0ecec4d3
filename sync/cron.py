"""Cron arithmetic: every fire time stepsync computes comes from here.

A task's schedule is a 5-field cron expression (minute hour day-of-month month
day-of-week, a note after `` # `` ignored, as the app writes them) read in the task's IANA
time zone. :mod:`cronsim` does the calendar work and handles daylight-saving changes the
way Debian's cron does: a job at a fixed local time (``0 9 * * *``) fires at that local
time on both sides of a change, once on the day a time does not exist (at the first
minute after the gap) or exists twice (the first time); a job every so many minutes or
hours (``*/15 * * * *``) fires by the real clock. Fire times leave here in UTC.

What the database checks on write (``stepsync.cron_problem``) is the syntax accepted
here; the scheduler also copes with rows older than that check.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# A note the app appends: "0 9 * * 1-5 # weekdays" (what the legacy executor stripped).
NOTE = re.compile(r"\s#(?:\s.*)?\Z", re.DOTALL)
FIELDS = 5
# Past this many missed fire times a catch-up counts no further ("at least").
MISSED_COUNT_LIMIT = 1000


class CronError(ValueError):
    """A schedule that cannot be read: bad expression or unknown time zone."""


@dataclass(frozen=True)
class Schedule:
    """A cron expression (note removed) in a time zone."""

    expression: str
    zone: ZoneInfo

    def after(self, moment: datetime) -> Iterator[datetime]:
        """Fire times strictly after ``moment`` (whole seconds), in UTC."""
        for local in CronSim(self.expression, moment.astimezone(self.zone)):
            yield local.astimezone(UTC)

    def next_after(self, moment: datetime) -> datetime:
        return next(self.after(moment))

    def at_or_after(self, moment: datetime) -> datetime:
        # CronSim drops microseconds and yields strictly later times: one microsecond back
        # makes a fire time equal to ``moment`` count, and one inside its second not.
        return self.next_after(moment - timedelta(microseconds=1))

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last fire time at or before ``moment`` (None if there is none)."""
        start = (moment + timedelta(seconds=1)).replace(microsecond=0).astimezone(self.zone)
        for local in CronSim(self.expression, start, reverse=True):
            return local.astimezone(UTC)
        return None

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone)


def parse(expression: str, time_zone: str) -> Schedule:
    """The schedule, or :class:`CronError` saying what is wrong with it."""
    body = NOTE.sub("", expression or "").strip()
    if len(body.split()) != FIELDS:
        raise CronError(f"cron expression {expression!r} has {len(body.split())} fields, not 5")
    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {time_zone!r}") from exc
    try:
        CronSim(body, datetime.now(zone))
    except CronSimError as exc:
        raise CronError(f"cron expression {expression!r}: {exc}") from None
    return Schedule(body, zone)


@dataclass(frozen=True)
class Fire:
    """What is due for a task at ``now``: the fire time to run (None: none now), how many
    earlier ones passed without a run, and the task's next fire time after it."""

    fire_at: datetime | None
    next_run_at: datetime | None
    missed: int = 0
    missed_at_least: bool = False
    first_missed_at: datetime | None = None


def due(
    schedule: Schedule | None,
    next_run_at: datetime | None,
    now: datetime,
    start_date: datetime | None = None,
) -> Fire:
    """The fire times of a task due at ``now``.

    ``next_run_at`` is the task's recorded next fire time: it fires as recorded (the app
    may set it to a time of its own, as for a one-time task), and cron fire times follow
    it. Fire times before ``start_date`` are not fire times. Of the fire times up to
    ``now``, the latest runs and the others count as missed; the next one is the first
    cron fire time after ``now``. Without a schedule a task fires once, at next_run_at.
    ``next_run_at`` None asks only for the first fire time after ``now``.
    """
    if next_run_at is None:
        if schedule is None:
            return Fire(None, None)
        return Fire(None, first_fire(schedule, now, start_date))
    if start_date is not None and start_date > now:
        # Nothing fires before the start: the first fire time at or after it is next.
        if schedule is None:
            return Fire(None, start_date)
        return Fire(None, schedule.at_or_after(start_date))
    if schedule is None:
        if start_date is not None and next_run_at < start_date:
            return Fire(None, None)
        return Fire(next_run_at, None)

    earliest = next_run_at
    if start_date is not None and earliest < start_date:
        earliest = schedule.at_or_after(start_date)
        if earliest > now:
            return Fire(None, earliest)
    following = schedule.next_after(now)
    # Fire times in (earliest, now], counted up to a limit.
    passed: list[datetime] = []
    for moment in schedule.after(earliest):
        if moment > now or len(passed) > MISSED_COUNT_LIMIT:
            break
        passed.append(moment)
    if not passed:
        return Fire(earliest, following)
    if len(passed) > MISSED_COUNT_LIMIT:
        latest = schedule.latest_at_or_before(now) or passed[-1]
        return Fire(latest, following, MISSED_COUNT_LIMIT, True, earliest)
    return Fire(passed[-1], following, len(passed), False, earliest)


def first_fire(schedule: Schedule, now: datetime, start_date: datetime | None) -> datetime:
    """The first fire time after ``now`` and not before ``start_date``."""
    if start_date is not None and start_date > now:
        return schedule.at_or_after(start_date)
    return schedule.next_after(now)


def upcoming(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``after``."""
    times = []
    for moment in schedule.after(after):
        if len(times) == count:
            break
        times.append(moment)
    return times
