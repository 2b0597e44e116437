"""OpenAPI documentation of the signed webhooks' request bodies.

The webhooks read their bodies raw (the signature covers the exact bytes or form fields), so FastAPI
cannot infer a request body; these describe what Twilio and Slack send, for /docs and for clients that
generate code from the schema. Only documentation: each route validates what it reads itself.
"""

from __future__ import annotations

from typing import Any

_SIGNED_ONLY = (
    ' Swagger UI cannot sign a request, so "Try it out" gets a 403: sign it as the README\'s webhook section '
    "shows, or let Twilio/Slack call it."
)


def _header(name: str, description: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def _form_body(description: str, properties: dict[str, Any], required: list[str], example: dict[str, str]):
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": True}
    return {
        "required": True,
        "description": description + _SIGNED_ONLY,
        "content": {"application/x-www-form-urlencoded": {"schema": schema, "example": example}},
    }


def _string(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


_TWILIO_SIGNATURE = _header(
    "X-Twilio-Signature",
    "Base64 HMAC-SHA1, keyed with TWILIO_AUTH_TOKEN (any token it lists), of PUBLIC_BASE_URL + path followed by "
    "every form field sorted by name (Twilio's RequestValidator). With X-Twilio-Webhooks-Signature-Settings, the "
    "same string keyed with TWILIO_WEBHOOK_SHARED_KEY (any secret it lists) and hashed with the algorithm that "
    "header names.",
)
_TWILIO_SIGNATURE_SETTINGS = _header(
    "X-Twilio-Webhooks-Signature-Settings",
    "`key=<SharedKey id>,algorithm=HMAC_SHA256`: Twilio adds it when a Webhook Rule matches the URL and signs "
    "with that Webhook Setting's SharedKey instead of the auth token. Present, X-Twilio-Signature is checked "
    "with TWILIO_WEBHOOK_SHARED_KEY (a 403 naming it while it is unset) and that algorithm (HMAC_SHA1 or "
    "HMAC_SHA256; another is a 403). Absent (the default), with TWILIO_AUTH_TOKEN and HMAC-SHA1.",
    required=False,
)
_SLACK_SIGNATURE = _header("X-Slack-Signature", "`v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{raw body}`.")
_SLACK_TIMESTAMP = _header("X-Slack-Request-Timestamp", "Unix seconds; refused when more than 5 minutes away.")

TWILIO_MESSAGE = {
    "parameters": [_TWILIO_SIGNATURE, _TWILIO_SIGNATURE_SETTINGS],
    "requestBody": _form_body(
        "An inbound WhatsApp message as Twilio posts it; Twilio sends more fields, all covered by the signature.",
        {
            "MessageSid": _string("Twilio's id of the message; a redelivery repeats it and runs nothing again."),
            "From": _string("The sender, `whatsapp:+E.164`; must be in WHATSAPP_ALLOWED_SENDERS."),
            "To": _string("The service's WhatsApp number, `whatsapp:+E.164`."),
            "Body": _string(
                "The text: a command (`start writing for 45 min`, `stop`, `status`, `brief`, `help`) "
                "or a question for the AI."
            ),
            "AccountSid": _string("The Twilio account."),
            "NumMedia": _string("How many media items came with the message."),
        },
        ["MessageSid", "From"],
        {
            "MessageSid": "SM0123456789abcdef0123456789abcdef",
            "From": "whatsapp:+15551234567",
            "To": "whatsapp:+14155238886",
            "Body": "start writing for 45 min",
            "AccountSid": "AC0123456789abcdef0123456789abcdef",
            "NumMedia": "0",
        },
    ),
}

TWILIO_STATUS = {
    "parameters": [_TWILIO_SIGNATURE, _TWILIO_SIGNATURE_SETTINGS],
    "requestBody": _form_body(
        "A status callback for a message the service sent.",
        {
            "MessageSid": _string("The message whose status changed."),
            "MessageStatus": _string("`queued`, `sent`, `delivered`, `read`, `failed` or `undelivered`."),
            "ErrorCode": _string("Twilio's error code when failed or undelivered (63016, 63015, ...)."),
            "To": _string("The recipient, `whatsapp:+E.164`."),
        },
        ["MessageSid", "MessageStatus"],
        {
            "MessageSid": "SM0123456789abcdef0123456789abcdef",
            "MessageStatus": "undelivered",
            "ErrorCode": "63016",
            "To": "whatsapp:+15551234567",
        },
    ),
}

SLACK_EVENT = {
    "parameters": [_SLACK_SIGNATURE, _SLACK_TIMESTAMP],
    "requestBody": {
        "required": True,
        "description": "An Events API request: the `url_verification` handshake, or an `event_callback` whose "
        "`event` is an `app_mention` or a direct message." + _SIGNED_ONLY,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "type": {
                            "type": "string",
                            "description": "`url_verification` or `event_callback` are acted on; any other type "
                            "(app_rate_limited, ...) is acknowledged with 200 and ignored.",
                        },
                        "challenge": _string("url_verification only: echoed back."),
                        "event_id": _string("event_callback only: a retry repeats it and runs nothing again."),
                        "event": {"type": "object", "description": "event_callback only: the event."},
                    },
                    "required": ["type"],
                    "additionalProperties": True,
                },
                "example": {
                    "type": "event_callback",
                    "event_id": "Ev0PV52K25",
                    "event": {
                        "type": "app_mention",
                        "user": "U012AB3CD",
                        "text": "<@U0BOT> start planning for 20 min",
                        "ts": "1764057600.000100",
                        "channel": "C0123456789",
                    },
                },
            }
        },
    },
}
