"""The cap on Claude's answers: an httpx2 transport wrapped around the Anthropic SDK's own.

The other upstreams' answers stop at MAX_RESPONSE_BYTES (`core.upstream`: `bounded_request` for httpx,
`CappedResponse` for the aiohttp sessions). The Anthropic SDK reads every answer, a 2xx or an error, whole
into memory through its HTTP client (httpx2, on aiohttp or on httpcore), so a broken or hostile
ANTHROPIC_BASE_URL could make the worker buffer any size, and a gzip bomb expand to gigabytes. This transport
sits under the SDK's client, asks for the answer uncompressed, decodes one compressed anyway a bounded piece
at a time, and stops past the cap. Imported with the SDK, when Claude is configured (see services/claude.py).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable

import httpx2

from core.errors import UpstreamError, operator_checks
from core.upstream import MAX_RESPONSE_BYTES, bounded_decoder

_ENCODING_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def cap_answers(http_client: httpx2.AsyncClient, *, upstream: str, setting: str) -> None:
    """Put `CappedTransport` under the SDK client's transport. httpx2 takes a `transport=` only in place of the
    default one, which the SDK builds from its own settings, so the built one is wrapped instead. The client
    is built with `trust_env=False`, so it mounts no other transport (for a proxy) that this would miss."""
    assert not http_client._mounts, "a mounted transport would not be capped"
    http_client._transport = CappedTransport(http_client._transport, upstream=upstream, setting=setting)


class CappedTransport(httpx2.AsyncBaseTransport):
    """Wraps the SDK client's transport. A refused answer raises `UpstreamError` while the body is read; the SDK
    wraps what its client raises in `APIConnectionError`, and the provider takes the problem back out."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, upstream: str, setting: str) -> None:
        self._inner = inner
        self._upstream = upstream
        self._setting = setting

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await self._inner.handle_async_request(request)
        encoding = response.headers.get("content-encoding", "")
        kept = [
            (name, value) for name, value in response.headers.multi_items() if name.lower() not in _ENCODING_HEADERS
        ]
        return httpx2.Response(
            response.status_code,
            headers=kept,
            stream=_CappedStream(response, bounded_decoder(encoding), encoding, refuse=self._refusal),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()

    def _refusal(self, status: int, why: str) -> UpstreamError:
        # The wording of core.upstream.guard_refusal, so every provider's refusal reads the same.
        return UpstreamError(
            f"{self._upstream} {why}. " + operator_checks(f"{self._setting}."),
            upstream=self._upstream,
            upstream_status=status,
        )


class _CappedStream(httpx2.AsyncByteStream):
    """The inner answer's raw body, decoded here (the headers that would make httpx2 decode it again are
    dropped), refused past MAX_RESPONSE_BYTES."""

    def __init__(
        self,
        response: httpx2.Response,
        decode: Callable[[bytes, int], bytes] | None,
        encoding: str,
        *,
        refuse: Callable[[int, str], UpstreamError],
    ) -> None:
        self._response = response
        self._decode = decode
        self._encoding = encoding
        self._refuse = refuse

    async def __aiter__(self) -> AsyncIterator[bytes]:
        status = self._response.status_code
        if self._decode is None:
            raise self._refuse(status, f"answered encoded as {self._encoding!r}, which is not read")
        read = 0
        try:
            async for raw in self._response.aiter_raw():
                chunk = self._decode(raw, MAX_RESPONSE_BYTES + 1 - read)
                read += len(chunk)
                if read > MAX_RESPONSE_BYTES:
                    raise self._refuse(status, f"answered more than {MAX_RESPONSE_BYTES} bytes; not read further")
                yield chunk
        except zlib.error as exc:
            raise self._refuse(status, f"answered a corrupt compressed body ({exc})") from None

    async def aclose(self) -> None:
        await self._response.aclose()
