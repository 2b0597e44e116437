"""The kinds of run the ledger records, and the statuses and triggers it writes, with no dependency: core.settings
(per-kind cutoffs) and the ledger both need the kinds, and the settings must not import the ledger's database
layer. `GET /runs` accepts exactly these values in its filters (routers/runs.py)."""

from enum import StrEnum


# Every kind of run the service records, in one place: code that records a run names its kind from here, and
# `GET /runs?kind=` accepts exactly these (a typo is a 422 listing them, not an empty page that reads as "no such
# runs"). tests/routers/test_runs_kind_filter.py checks that every call site uses a member and every current
# member is used. A kind no longer recorded is kept, in RETIRED_RUN_KINDS, because older rows still carry it.
# A kind given to BackgroundTasks.spawn is recorded only when that task failed or was cut off at shutdown (the
# work inside records its own runs): schedule.briefing, slack.event, slack.notice and whatsapp.message only so.
class RunKind(StrEnum):
    """What a run did. `schedule.prune` is no longer recorded; older runs may carry it."""

    AI_PROCESS = "ai.process"
    BRIEFING = "briefing"  # POST /morning-briefing, BRIEFING_CRON and the `brief` command alike
    COMMAND_START = "command.start"  # from a WhatsApp or Slack message, as are command.stop and inbound.chat
    COMMAND_STOP = "command.stop"
    EMAIL_SEND = "email.send"
    INBOUND_CHAT = "inbound.chat"
    SCHEDULE_BRIEFING = "schedule.briefing"
    SCHEDULE_STOP_TIMER = "schedule.stop_timer"
    SLACK_EVENT = "slack.event"
    SLACK_NOTICE = "slack.notice"
    SLACK_NOTIFY = "slack.notify"
    SLACK_REPLY = "slack.reply"
    TOGGL_START_TIMER = "toggl.start_timer"
    TOGGL_STOP_TIMER = "toggl.stop_timer"
    WHATSAPP_DELIVERY = "whatsapp.delivery"  # a status callback saying a sent message failed
    WHATSAPP_MESSAGE = "whatsapp.message"
    WHATSAPP_REPLY = "whatsapp.reply"
    WHATSAPP_SEND = "whatsapp.send"
    # Retired, last so the 422 lists the current kinds first.
    SCHEDULE_PRUNE = "schedule.prune"  # the start-up prune's background task, until commit 0b6e554


#: Kinds older releases recorded and this one no longer does: still accepted by `GET /runs?kind=`.
RETIRED_RUN_KINDS = frozenset({RunKind.SCHEDULE_PRUNE})


class RunStatus(StrEnum):
    """Where a run stands. `running`: not finished yet, or its worker died (the prune closes it as `failed`)."""

    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"  # some steps failed
    FAILED = "failed"
    DRY_RUN = "dry_run"
    CANCELLED = "cancelled"  # cut off at shutdown, or by a caller that left; its call may have taken effect


class RunTrigger(StrEnum):
    """How a run was started: a request to the API, a chat message, or the scheduler."""

    API = "api"
    WHATSAPP = "whatsapp"
    SLACK = "slack"
    SCHEDULE = "schedule"
