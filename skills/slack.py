"""Slack skill: post messages with slack_sdk's AsyncWebClient.

Slack answers most failures with HTTP 200 and `{"ok": false, "error": "..."}`;
slack_sdk raises `SlackApiError` for those and for any non-200 answer. This
module turns each into a domain error (`core.errors`) and lets
`core.upstream.with_retries` be the only retry loop: the SDK's own retry
handlers are switched off in `open_skill`.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from contextvars import ContextVar
from typing import Any

import aiohttp
from pydantic import Field
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from core.errors import (
    OPERATOR_CHECKS,
    OPERATOR_SETS,
    Conflict,
    InvalidInput,
    NotFound,
    PerAudience,
    Phrase,
    ProblemError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    operator_checks,
)
from core.ledger import note_request
from core.outcome import ActionOutcome
from core.registry import Integration
from core.resources import Resources
from core.settings import Settings
from core.upstream import (
    CappedResponse,
    RedirectRefused,
    guard_refusal,
    outcome_unknown,
    parse_retry_after,
    refuse_redirects,
    server_error,
    unreadable_create,
    with_retries,
)


def _channel_advice(settings: Settings) -> list[str]:
    """Configured without a default channel, the chat `start` and a scheduled briefing had nowhere to post, and
    only their replies said so (found by a user review)."""
    if settings.slack_bot_token is None or settings.slack_default_channel:
        return []  # unconfigured: missing_settings says what to set first
    briefing = (
        ""
        if settings.briefing_channel
        else " The morning briefing posts its summary only where a request's `channel` or BRIEFING_CHANNEL says."
    )
    return [
        "SLACK_DEFAULT_CHANNEL is not set: POST /slack-notify needs a `channel` in each request, and the chat "
        f"`start` command cannot announce its timer.{briefing}"
    ]


INTEGRATION = Integration(
    name="slack",
    kind="skill",
    description="Post messages to Slack channels and threads.",
    required=("SLACK_BOT_TOKEN",),
    optional=("SLACK_DEFAULT_CHANNEL", "SLACK_SIGNING_SECRET", "SLACK_BASE_URL"),
    operations=("post_message",),
    advice=_channel_advice,
)

UPSTREAM = "slack"
_TIMEOUT_HINT = "connection timed out"
#: Attempts per message, counting the first. Only failures that prove nothing was posted are retried:
#: 429 / `ratelimited`, `request_timeout`, and a connection that was never made (refused, connect timeout).
ATTEMPTS = 3
#: A Retry-After longer than this is passed on to the caller as a 429 instead of being waited out:
#: an HTTP caller should not hang for a minute on a rate limit.
MAX_RETRY_WAIT_SECONDS = 10.0
#: Slack rejects more than 50 blocks in one message.
MAX_BLOCKS = 50


def escape_text(text: str) -> str:
    """`text` with Slack's three control characters escaped, so it shows as written and is never markup.

    Slack reads `<!channel>`, `<!here>`, `<@U123>` and `<url|label>` in a message's text as a broadcast, a
    mention or a link. Text that came from someone else (an inbound message, a task name, an LLM answer)
    must not be able to ping a channel in the bot's name: Slack's formatting docs ask for exactly these
    three characters to be escaped, and nothing more.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape_text(text: str) -> str:
    """Slack's escaping undone: an inbound "R&D" arrives as `R&amp;D`. `&amp;` last, so `&amp;lt;` stays `&lt;`."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


#: The operator's token: a chat user (a WhatsApp `start` whose announcement failed) reads that the operator must
#: check it.
_CREDENTIAL_HINT = operator_checks(
    "SLACK_BOT_TOKEN: it must be a valid bot token (xoxb-...) of an installed, active app."
)
_AUTH_ERRORS = {
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "not_allowed_token_type",
}
_INPUT_ERRORS = {
    "msg_too_long": "The message is too long for Slack; shorten it.",
    "no_text": "The message has no text: send a non-empty message or blocks.",
    "invalid_blocks": "Slack rejected the blocks; check them in Block Kit Builder.",
    "invalid_blocks_format": "The blocks are not a valid Block Kit array.",
    "too_many_attachments": "Too many attachments in one message.",
    "invalid_arguments": "Slack rejected the request's arguments.",
}


class SlackPosted(ActionOutcome):
    """A posted (or, in a dry run, validated) Slack message."""

    channel: str = Field(description="The channel as Slack reports it (an ID such as C0123456789) or as requested.")
    ts: str | None = Field(None, description="The message timestamp, Slack's message id; None in a dry run.")

    def ledger_external_id(self) -> str | None:
        return f"{self.channel}/{self.ts}" if self.ts else None


class SlackSkill:
    """Slack Web API through slack_sdk's AsyncWebClient on one shared aiohttp session."""

    def __init__(self, settings: Settings, client: AsyncWebClient) -> None:
        self.settings = settings
        self.client = client

    async def post_message(
        self,
        *,
        text: str,
        channel: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
        dry_run: bool = False,
    ) -> SlackPosted:
        """Post `text` (the notification fallback when `blocks` are given) to `channel` or SLACK_DEFAULT_CHANNEL."""
        INTEGRATION.require(self.settings)
        target = (channel or self.settings.slack_default_channel or "").strip()
        if not target:
            # Worded per reader: the chat `start` command reaches here too, and a WhatsApp sender has no `channel`
            # to pass (found by a black-box review), nor can send POST /slack-notify: only the operator's setting helps.
            raise InvalidInput(
                Phrase(("No Slack channel: ", OPERATOR_SETS))
                + " SLACK_DEFAULT_CHANNEL"
                + PerAudience(api=", or pass `channel` to POST /slack-notify.", chat=".")
            )
        if not text.strip():
            # Always required, even with blocks: it is the notification and screen-reader fallback.
            raise InvalidInput("The message text is empty.")
        if blocks is not None and len(blocks) > MAX_BLOCKS:
            raise InvalidInput(f"Slack accepts at most {MAX_BLOCKS} blocks per message; got {len(blocks)}.")

        payload: dict[str, Any] = {"channel": target, "text": text}
        if blocks:
            payload["blocks"] = blocks
        if thread_ts:
            payload["thread_ts"] = thread_ts
        if dry_run:
            return SlackPosted(dry_run=True, channel=target, ts=None, payload=payload)

        note_request(payload)
        data = await with_retries(
            lambda: self._post(payload), attempts=ATTEMPTS, max_wait_seconds=MAX_RETRY_WAIT_SECONDS
        )
        return SlackPosted(channel=str(data.get("channel") or target), ts=data.get("ts"), payload=payload)

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One attempt: the response body on success, a domain error otherwise."""
        attempt = _Attempt()
        marker = _ATTEMPT.set(attempt)
        try:
            response = await self.client.chat_postMessage(**payload)
        except SlackApiError as exc:
            raise slack_error(exc, channel=payload["channel"]) from None
        except aiohttp.ConnectionTimeoutError:
            # Never connected, so nothing was posted: safe to try again.
            raise UpstreamTimeout(f"Slack could not be reached in time ({_TIMEOUT_HINT}).", upstream=UPSTREAM) from None
        except TimeoutError:
            # The request went out and no answer came: Slack may have posted it. Retrying could post twice.
            raise UpstreamTimeout(
                f"Slack did not answer within {self.settings.http_timeout_seconds:g} s."
                + outcome_unknown(UPSTREAM, _may_have_posted(payload["channel"])),
                upstream=UPSTREAM,
                retryable=False,
                outcome_unknown=True,
            ) from None
        except RedirectRefused as exc:
            # The host answered a redirect instead of posting: nothing was posted, and nothing was sent on.
            raise guard_refusal(exc, upstream=UPSTREAM, setting="SLACK_BASE_URL", name="Slack") from None
        except aiohttp.ClientConnectorError as exc:
            # Connection refused or DNS failure: the request never left.
            raise UpstreamUnavailable(
                f"Slack could not be reached ({type(exc).__name__}).", upstream=UPSTREAM
            ) from None
        except ValueError as exc:
            if not attempt.handed_to_aiohttp:
                # Raised while the SDK built the URL (urljoin, yarl): nothing left, nothing was posted. Told apart
                # from the case below, which before was also reported for these (found by a code review).
                raise UpstreamError(
                    f"Slack was not called: the URL built from SLACK_BASE_URL is not valid ({exc}). "
                    + operator_checks("SLACK_BASE_URL."),
                    upstream=UPSTREAM,
                    nothing_sent=True,
                ) from None
            # The SDK could not decode the answer (invalid UTF-8 in a 200, say): Slack may have posted it. It
            # escaped as a 500 with no run id (found by a black-box review).
            raise unreadable_create(
                f"Slack's answer could not be decoded ({type(exc).__name__}).",
                upstream=UPSTREAM,
                status=None,
                check=_may_have_posted(payload["channel"]),
            ) from None
        except aiohttp.ClientError as exc:
            # Reset or dropped mid-answer: the message may exist, so this is not retried.
            raise UpstreamUnavailable(
                f"The connection to Slack failed mid-request ({type(exc).__name__})."
                + outcome_unknown(UPSTREAM, _may_have_posted(payload["channel"])),
                upstream=UPSTREAM,
                retryable=False,
                outcome_unknown=True,
            ) from None
        except AttributeError:
            # slack_sdk reads a 200 text/plain answer as a str (a JSON array as a list) and calls `.get` on it.
            # It answered 200, so it may have posted: not retried, and said so.
            raise UpstreamError(
                "Slack answered with something other than a JSON object (plain text, or JSON of another shape)."
                + outcome_unknown(UPSTREAM, _may_have_posted(payload["channel"])),
                upstream=UPSTREAM,
                outcome_unknown=True,
            ) from None
        finally:
            _ATTEMPT.reset(marker)
        data = response.data
        if not isinstance(data, dict) or not data.get("ts"):
            raise UpstreamError(
                "Slack accepted the message but its answer has no `ts`."
                + outcome_unknown(UPSTREAM, _may_have_posted(payload["channel"])),
                upstream=UPSTREAM,
                outcome_unknown=True,
            )
        return data


class _Attempt:
    """One call of `_post`: whether aiohttp was handed the request (the SDK had built it), told by `_note_handover`."""

    handed_to_aiohttp = False


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("slack_attempt", default=None)


async def _note_handover(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """aiohttp client middleware: marks the current `_Attempt` (the SDK calls aiohttp in the caller's task, so it
    sees the caller's context). An error raised before this ran was raised before anything could leave."""
    attempt = _ATTEMPT.get()
    if attempt is not None:
        attempt.handed_to_aiohttp = True
    return await handler(request)


def _may_have_posted(channel: str) -> str:
    """How to find out whether a post whose outcome is unknown happened (see `core.upstream.outcome_unknown`)."""
    return f"the message may have been posted; check {channel}"


def slack_error(exc: SlackApiError, *, channel: str) -> ProblemError:
    """Map one SlackApiError (an `ok: false` body or a non-200 answer) to a domain error.

    Posting is not replay-safe: only answers that Slack documents as "not done" are retried (429 or
    `ratelimited` in any status, `request_timeout`). Every other 5xx, and `fatal_error` / `internal_error` /
    `service_unavailable` in any status, says the outcome is unknown and is not retried.
    """
    response = exc.response
    # A SlackResponse has status_code/data; for an unparseable body the SDK passes the raw aiohttp response.
    status = getattr(response, "status_code", None) or getattr(response, "status", None) or 0
    data = getattr(response, "data", None)
    headers = getattr(response, "headers", None) or {}
    error = data.get("error") if isinstance(data, dict) else None

    if status == 429 or error == "ratelimited":
        # https://api.slack.com/docs/rate-limits: over the limit Slack answers 429 with Retry-After, "the number
        # of seconds until you can retry": the request was refused, not performed, so it is retried. The
        # `ratelimited` error means the same whatever status carries it ("Refer to the Retry-After header for
        # when to retry the request"), so its Retry-After is honoured too.
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return UpstreamRateLimited(
            "Slack's rate limit was reached (about one message per second per channel)."
            + (f" Slack asks to wait {retry_after:g} s." if retry_after is not None else ""),
            upstream=UPSTREAM,
            retry_after=retry_after,
            slack_error=error,
        )
    if status >= 500:
        # Slack documents no 5xx as "nothing was posted": `fatal_error` and `internal_error` say "it's possible some
        # aspect of the operation succeeded before the error was raised", `service_unavailable` only that "the
        # service is temporarily unavailable" (https://api.slack.com/methods/chat.postMessage#errors). A 503 with
        # Retry-After is not documented either. So no 5xx is retried: the error says how to check instead.
        said = f" ({error})" if error else ""
        return server_error(
            status,
            f"Slack answered {status}{said}.",
            upstream=UPSTREAM,
            replay_safe=False,
            check=_may_have_posted(channel),
            retry_after=parse_retry_after(headers.get("Retry-After")),
            slack_error=error,
        )
    if error is None:
        # A 200 whose body is not JSON (an HTML error page from a proxy), or a 4xx without Slack's error shape.
        if 200 <= status < 300:
            # A 2xx: Slack (or whatever answered for it) may have posted. Not retried, and said so.
            return unreadable_create(
                f"Slack answered HTTP {status} without a usable JSON body.",
                upstream=UPSTREAM,
                status=status,
                check=_may_have_posted(channel),
            )
        # Slack's Web API answers its errors as {"ok": false}: this came from something else, most likely a
        # SLACK_BASE_URL that is not the API root (a 404 page named no setting; found by a user review).
        return UpstreamError(
            Phrase((f"Slack answered HTTP {status} without a usable JSON body: ", OPERATOR_CHECKS))
            + " SLACK_BASE_URL (the Web API root, https://slack.com/api/).",
            upstream=UPSTREAM,
            upstream_status=status,
        )
    return _mapped_ok_false(str(error), data, channel=channel)


def _mapped_ok_false(error: str, data: dict[str, Any], *, channel: str) -> ProblemError:
    if error == "channel_not_found":
        return NotFound(
            f"Slack channel {channel!r} was not found. Use a channel ID (C0123456789) or a name the bot can see.",
            upstream=UPSTREAM,
            slack_error=error,
        )
    if error == "not_in_channel":
        return Conflict(
            f"The bot is not a member of {channel!r}. Invite it first: type `/invite @your-bot` in that channel.",
            upstream=UPSTREAM,
            slack_error=error,
        )
    if error == "is_archived":
        return Conflict(
            f"Slack channel {channel!r} is archived. Unarchive it or choose another channel.",
            upstream=UPSTREAM,
            slack_error=error,
        )
    if error in _AUTH_ERRORS:
        return UpstreamError(
            f"Slack refused the token ({error}). " + _CREDENTIAL_HINT,
            upstream=UPSTREAM,
            slack_error=error,
            settings=["SLACK_BOT_TOKEN"],
        )
    if error == "missing_scope":
        needed = data.get("needed") or "chat:write"
        return UpstreamError(
            Phrase(
                (
                    f"SLACK_BOT_TOKEN lacks the {needed} scope",
                    PerAudience(
                        api=". Add it under OAuth & Permissions and reinstall the app.",
                        chat=": the operator must add it under OAuth & Permissions and reinstall the app.",
                    ),
                )
            ),
            upstream=UPSTREAM,
            slack_error=error,
            settings=["SLACK_BOT_TOKEN"],
        )
    if error in _INPUT_ERRORS:
        return InvalidInput(_INPUT_ERRORS[error], upstream=UPSTREAM, slack_error=error)
    if error == "request_timeout":
        # "The method was called via a POST request, but the POST data was either missing or truncated": Slack
        # never had the whole message, so nothing was posted and a retry is safe.
        return UpstreamTimeout("Slack timed out reading the request.", upstream=UPSTREAM, slack_error=error)
    if error == "service_unavailable":
        # Documented only as "the service is temporarily unavailable", not as "nothing was done": not retried.
        return UpstreamUnavailable(
            "Slack is temporarily unavailable (service_unavailable)."
            + outcome_unknown(UPSTREAM, _may_have_posted(channel)),
            upstream=UPSTREAM,
            slack_error=error,
            retryable=False,
            outcome_unknown=True,
        )
    if error in ("fatal_error", "internal_error"):
        # "It's possible some aspect of the operation succeeded before the error was raised."
        return UpstreamError(
            f"Slack failed ({error})." + outcome_unknown(UPSTREAM, _may_have_posted(channel)),
            upstream=UPSTREAM,
            slack_error=error,
            outcome_unknown=True,
        )
    return UpstreamError(f"Slack refused the message: {error}.", upstream=UPSTREAM, slack_error=error)


async def open_skill(resources: Resources, stack: AsyncExitStack) -> SlackSkill:
    settings = resources.settings
    # Connecting has its own limit (`Settings.connect_timeout_seconds`, as for Toggl and Twilio): only then is a
    # connection that never completes a ConnectionTimeoutError, retried as "nothing was sent". Under `total` alone
    # it was a plain TimeoutError, reported "may have been posted" and never retried (found by a mutation review).
    # The answer still has the full HTTP_TIMEOUT_SECONDS once connected.
    connect = settings.connect_timeout_seconds
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=connect + settings.http_timeout_seconds, connect=connect),
        # A redirect would carry the token and the message to another host, and its `ok` would pass for a post.
        # _note_handover first: it tells an error raised before the request was handed over (nothing sent).
        middlewares=(_note_handover, refuse_redirects),
        response_class=CappedResponse,
    )
    stack.push_async_callback(session.close)
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    # retry_handlers=[]: the SDK would otherwise retry connection errors itself, on top of with_retries.
    client = AsyncWebClient(token=token, base_url=settings.slack_base_url, session=session, retry_handlers=[])
    return SlackSkill(settings, client)
