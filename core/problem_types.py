"""What each problem `type` means and what to do about it: the page a type URI resolves to.

RFC 9457 (section 3.1.1): a problem's `type` URI, "when dereferenced, SHOULD provide
human-readable documentation for the problem type". Every body this service sends has
a relative `type` such as `/problems/not-configured`; `GET /problems/{slug}`
(routers/problems.py) answers with the entry below. tests/core/test_problem_types.py
checks that every slug the code can send has an entry and a row in docs/errors.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProblemType:
    slug: str
    title: str
    statuses: tuple[int, ...]
    when: str
    fix: str


PROBLEM_TYPES: dict[str, ProblemType] = {
    entry.slug: entry
    for entry in (
        ProblemType(
            "bad-request",
            "Malformed request",
            (400,),
            "The body could not be parsed at all: invalid UTF-8, JSON nested too deeply for the parser or with a "
            "number of more than 4,300 digits (the detail says which), a broken form.",
            "Send a UTF-8 JSON object with Content-Type: application/json.",
        ),
        ProblemType(
            "unauthorized",
            "Unauthorized",
            (401,),
            "APP_API_KEY is set and the request's key is missing or wrong.",
            "Send the value of APP_API_KEY as X-API-Key: <key> or Authorization: Bearer <key>.",
        ),
        ProblemType(
            "forbidden",
            "Forbidden",
            (403,),
            "A webhook's signature is missing or does not match; or, without APP_API_KEY, the request was addressed "
            "to a domain name (its Host), which a web page could have pointed at this machine (DNS rebinding).",
            "Check TWILIO_AUTH_TOKEN (TWILIO_WEBHOOK_SHARED_KEY for a webhook signed with a Webhook Setting's "
            "SharedKey, which carries X-Twilio-Webhooks-Signature-Settings) or SLACK_SIGNING_SECRET, and that "
            "PUBLIC_BASE_URL is the exact public URL the sender calls (Twilio signs that URL). Without a key, call "
            "the service as 127.0.0.1 or localhost, or set APP_API_KEY.",
        ),
        ProblemType(
            "not-found",
            "Not found",
            (404,),
            "No run with that id, or no such route; or, with `upstream` set, the upstream has no such thing (a "
            "Slack channel, a Toggl workspace or time entry).",
            "List runs with GET /runs; see /docs for the routes. For an upstream's 404, check the channel or id; if "
            "every Toggl call answers it, check TOGGL_BASE_URL (the API v9 base).",
        ),
        ProblemType(
            "request-timeout",
            "Request body too slow",
            (408,),
            "The request body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS of the request's start (a stalled "
            "or deliberately slow client); nothing ran.",
            "Send the whole body at once; on a very slow link, raise REQUEST_BODY_TIMEOUT_SECONDS.",
        ),
        ProblemType(
            "conflict",
            "Conflict with the current state",
            (409,),
            "The upstream's state refuses the action (the bot is not in the Slack channel, the WhatsApp sandbox was "
            "not joined, a free-form message outside the 24-hour window), or a request with the same "
            "Idempotency-Key is still in progress, or finished (its `run_id`) without its answer being stored "
            "for the key.",
            "Follow the detail's hint; where a retry helps, Retry-After says when.",
        ),
        ProblemType(
            "payload-too-large",
            "Request too large",
            (413,),
            "The body is over MAX_BODY_BYTES (a Twilio webhook's over 64 KiB or 200 fields), or a prompt over "
            "MAX_INPUT_CHARS.",
            "Send less, or raise the limit (`limit_bytes` gives the body's, `limit_chars` the prompt's).",
        ),
        ProblemType(
            "unsupported-content-encoding",
            "Unsupported Content-Encoding",
            (415,),
            "The body was sent compressed (Content-Encoding: gzip, say); the service reads only uncompressed bodies.",
            "Send the body uncompressed, without a Content-Encoding header (or with Content-Encoding: identity).",
        ),
        ProblemType(
            "llm-prompt-too-large",
            "Prompt too large for the model",
            (413,),
            "The prompt does not fit any configured model's context.",
            "Shorten the prompt, or force a provider with a larger context.",
        ),
        ProblemType(
            "invalid-input",
            "Invalid input",
            (422,),
            "The request failed validation before anything ran; or an upstream refused a value (an address, a "
            "number); or an Idempotency-Key was reused with another body.",
            "Correct each field listed in `errors`; use a new Idempotency-Key for a new request.",
        ),
        ProblemType(
            "llm-request-rejected",
            "The LLM provider rejected the request",
            (422,),
            "The provider refused the request as malformed (its 400): not retried, not sent elsewhere.",
            "Check text, system and max_tokens.",
        ),
        ProblemType(
            "rate-limited",
            "Too many requests",
            (429,),
            "This client reached RATE_LIMIT_PER_MINUTE on this costly endpoint.",
            "Wait Retry-After seconds.",
        ),
        ProblemType(
            "upstream-rate-limited",
            "Upstream rate limit reached",
            (429,),
            "Slack, Toggl, Twilio or every LLM provider is rate limiting us, after bounded retries.",
            "Wait Retry-After seconds when it is given.",
        ),
        ProblemType(
            "client-closed-request",
            "Client closed the request",
            (499,),
            "The caller went away during an LLM call, which was cancelled. Only the ledger sees this answer.",
            "Nothing: send the request again if the answer is still wanted.",
        ),
        ProblemType(
            "internal-error",
            "Internal error",
            (500,),
            "A bug. It is logged with its traceback under the request id.",
            "Report it with the `request_id`.",
        ),
        ProblemType(
            "upstream-error",
            "Upstream service failed",
            (502,),
            "An upstream refused our credentials, answered a 5xx (a create is not retried then, and its outcome is "
            "unknown), or answered something unusable.",
            "Read `upstream` and the detail: it names the setting to check, or where to look before retrying.",
        ),
        ProblemType(
            "llm-providers-failed",
            "Every LLM provider failed",
            (502,),
            "Every candidate provider failed; `providers` lists each one's error.",
            "Read each provider's error; check their keys and status pages.",
        ),
        ProblemType(
            "briefing-failed",
            "The morning briefing failed",
            (502,),
            "Every step of the briefing failed; `steps` gives each one's reason and `run_id` the ledger record.",
            "Read `steps`.",
        ),
        ProblemType(
            "not-configured",
            "Integration not configured",
            (503,),
            "A skill or provider is missing settings; `missing_settings` names them (never their values).",
            "Set them in the environment or .env and restart.",
        ),
        ProblemType(
            "upstream-unavailable",
            "Upstream service unreachable",
            (503,),
            "The upstream refused or reset the connection, or answered 503.",
            "Retry later; check the *_BASE_URL setting if it persists.",
        ),
        ProblemType(
            "store-unavailable",
            "Database unavailable",
            (503,),
            "The service's own database did not answer. With `nothing_sent: true` (the rate-limit count, the "
            "Idempotency-Key claim, the run's start, a webhook's claim of its delivery or a status callback's "
            "record failed, or a read such as GET /runs) the request did nothing; with `outcome_unknown: true` it "
            "failed mid-request, and what it did may not be recorded.",
            "Check DATABASE_URL and the database. Without `outcome_unknown`, retry after Retry-After; with it, "
            "check GET /runs first.",
        ),
        ProblemType(
            "upstream-timeout",
            "Upstream service timed out",
            (504,),
            "The upstream (or a gateway in front of it) did not answer in time.",
            "Retry later. With `outcome_unknown: true` (a create that may have happened) check the upstream first "
            "(the detail says where). With `nothing_sent: true` nothing was sent: check the settings the detail "
            "names (an SMTP server silent from the start is often on the wrong port or mode).",
        ),
    )
}
