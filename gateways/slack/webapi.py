"""Web API calls over HTTP: per-method rate limits, bounded retries, Slack's errors.

Methods are called with form bodies (``response_url`` posts with JSON).

Slack rate-limits each method separately and answers 429 with ``Retry-After``;
a method that got one waits here before its next call (other methods go on),
and the call is retried at most ``retries`` times. Slack's ``ok: false``
bodies are results, not exceptions: the caller reports them to consumers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin

import aiohttp

from gateways.core.backoff import Backoff
from gateways.core.metrics import Metrics


@dataclass
class ApiResult:
    """What one call came to.

    Args:
        ok: Slack's ``ok`` (True for a response_url post answered 2xx).
        body: the JSON body, or None when there was none.
        error: Slack's ``error`` or the gateway's reason (``ratelimited``,
            ``http_500``, ``network_error: ...``).
        attempts: how many times the call was made (retries included).
    """

    ok: bool
    body: dict[str, Any] | None
    error: str | None
    attempts: int = 1


def form_fields(params: dict[str, Any]) -> dict[str, str]:
    """Web API arguments as form fields: strings as they are, everything else as JSON."""
    fields = {}
    for key, value in params.items():
        if value is None:
            continue
        fields[key] = value if isinstance(value, str) else json.dumps(value)
    return fields


#: The headers of a form body (what aiohttp's FormData sends for plain fields).
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


class WebApi:
    """A small Web API client on one aiohttp session.

    Args:
        base_url: ``slack.api_url``; method names are appended.
        token: the bot token sent as ``Authorization: Bearer``.
        timeout: seconds per HTTP request.
        retries: retries after 429 or a network error.
        max_retry_after: longest Retry-After honoured; longer ones fail the call.
        metrics: where calls and rate limits are counted.
    """

    def __init__(self, base_url: str, token: str, timeout: float = 10.0, retries: int = 3,
                 max_retry_after: float = 60.0, metrics: Metrics | None = None) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.max_retry_after = max_retry_after
        self.metrics = metrics or Metrics()
        self.log = logging.getLogger("gateway.slack.webapi")
        self._session: aiohttp.ClientSession | None = None
        # method -> monotonic time before which no call of it is sent
        self._blocked_until: dict[str, float] = {}
        self._urls: dict[str, str] = {}  # method -> its URL

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=100),
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, params: dict[str, Any] | None = None, token: str | None = None) -> ApiResult:
        """Call Web API ``method`` with a JSON body.

        Args:
            method: e.g. ``chat.postMessage``.
            params: the arguments.
            token: a token other than the bot token (``apps.connections.open``).
        """
        url = self._urls.get(method)
        if url is None:
            url = urljoin(self.base_url, method)
            if len(self._urls) < 256:  # consumers may name any method: keep the cache small
                self._urls[method] = url
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return await self._request(method, url, params or {}, headers)

    async def post_response_url(self, url: str, body: dict[str, Any]) -> ApiResult:
        """POST ``body`` to a slash command's or an action's ``response_url``."""
        return await self._request("response_url", url, body, {})

    async def _request(self, method: str, url: str, body: dict[str, Any], headers: dict[str, str]) -> ApiResult:
        backoff = Backoff(initial=0.5, maximum=5.0)
        attempt = 0
        while True:
            await self._wait_turn(method)
            started = time.perf_counter()
            try:
                result, retry_after = await self._once(url, body, headers, method != "response_url")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = f"network_error: {type(exc).__name__}: {exc}".rstrip(": ")
                self.metrics.inc("slack_api_errors_total", "Web API calls that failed", method=method,
                                 error="network_error")
                if attempt >= self.retries:
                    return ApiResult(False, None, error, attempt + 1)
                attempt += 1
                self.log.warning("%s failed (%s); retry %d of %d", method, error, attempt, self.retries)
                await backoff.wait()
                continue
            self.metrics.observe("slack_api_seconds", time.perf_counter() - started, "Web API latency",
                                 method=method)
            if retry_after is None:
                self.metrics.inc("slack_api_calls_total", "Web API calls", method=method,
                                 ok=str(result.ok).lower())
                result.attempts = attempt + 1
                return result
            self.metrics.inc("slack_api_ratelimited_total", "429 answers from Slack", method=method)
            if attempt >= self.retries or retry_after > self.max_retry_after:
                self.log.error("%s rate-limited (Retry-After %ss); giving up after %d retries",
                               method, retry_after, attempt)
                return ApiResult(False, result.body, "ratelimited", attempt + 1)
            attempt += 1
            self._blocked_until[method] = max(self._blocked_until.get(method, 0.0),
                                              time.monotonic() + retry_after)
            self.log.warning("%s rate-limited: waiting %ss (retry %d of %d)", method, retry_after,
                             attempt, self.retries)

    async def _wait_turn(self, method: str) -> None:
        while True:
            delay = self._blocked_until.get(method, 0.0) - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    async def _once(self, url: str, body: dict[str, Any], headers: dict[str, str],
                    web_api: bool) -> tuple[ApiResult, float | None]:
        if web_api:
            # Every Web API method takes a form (not all take JSON bodies); nested
            # values such as blocks travel JSON-encoded inside it, as Slack documents.
            # Encoded here, as aiohttp's FormData would, without building one per call.
            request = self._client().post(url, data=urlencode(form_fields(body)).encode(),
                                          headers={**headers, **FORM_HEADERS})
        else:
            request = self._client().post(url, json=body, headers=headers)
        async with request as response:
            text = await response.text()
            parsed: Any = None
            if text:
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = None
            data = parsed if isinstance(parsed, dict) else None
            if response.status == 429:
                try:
                    retry_after = float(response.headers.get("Retry-After", "1"))
                except ValueError:
                    retry_after = 1.0
                return ApiResult(False, data, "ratelimited"), max(retry_after, 0.0)
            if response.status >= 400:
                error = (data or {}).get("error") or f"http_{response.status}"
                return ApiResult(False, data, str(error)), None
            if data is None:
                if web_api:
                    return ApiResult(False, None, "invalid_response: not a JSON object"), None
                # a response_url answers "ok" as plain text
                return ApiResult(True, {"body": text} if text else None, None), None
            ok = bool(data.get("ok", True))
            return ApiResult(ok, data, None if ok else str(data.get("error") or "unknown_error")), None
