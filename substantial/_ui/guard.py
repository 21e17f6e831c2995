"""
What keeps the view safe to leave open: the access token, the CSRF check on every write,
and headers that forbid scripts from anywhere but the view itself.

* With a token, every request must show it: ``Authorization: Bearer TOKEN``, or a cookie
  set by opening any page once with ``?token=TOKEN`` (then the address is cleaned).
* Every form carries a CSRF value; a POST without the right one, or from another
  origin, is refused with 403. The value is random per server process and is not the
  token, so a page never shows the token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["COOKIE", "Guard", "new_csrf", "same"]

COOKIE = "substantial_ui_token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def same(given: str, wanted: str) -> bool:
    return hmac.compare_digest(given.encode(), wanted.encode())


class Guard:
    """ASGI middleware: the token check and the security headers, around the whole app."""

    def __init__(self, app: App, token: str | None, hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.token = token or None
        #: the host names a request may address (empty: any); against DNS rebinding, where
        #: another site's page reaches a view on 127.0.0.1 under that site's own name
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        if self.hosts and _host_name(scope) not in self.hosts:
            await _refuse(with_headers, 421, b"This view answers to its own address only.\n")
            return
        if self.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            offered = query.get("token")
            if offered is not None and same(offered, self.token):
                await _set_cookie_and_clean(scope, query, self.token, with_headers)
                return
            if not self._shown(scope):
                await _refuse(with_headers, 401, NEEDS_TOKEN)
                return
        await self.app(scope, receive, with_headers)

    def _shown(self, scope: Scope) -> bool:
        assert self.token is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and same(given.strip(), self.token):
                    return True
            elif name == b"cookie":
                cookie: SimpleCookie = SimpleCookie()
                try:
                    cookie.load(value.decode("latin-1"))
                except Exception:
                    continue
                if COOKIE in cookie and same(cookie[COOKIE].value, self.token):
                    return True
        return False


async def _set_cookie_and_clean(
    scope: Scope, query: dict[str, str], token: str, send: Send
) -> None:
    query.pop("token")
    location = scope.get("root_path", "") + scope["path"]
    if query:
        location += "?" + urlencode(query)
    cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode())],
        }
    )
    await send({"type": "http.response.body", "body": b""})


NEEDS_TOKEN = (
    b"This view needs its token: open it once as /?token=TOKEN, "
    b"or send Authorization: Bearer TOKEN.\n"
)


def _host_name(scope: Scope) -> str:
    """The host name the request addressed (its ``Host`` header, without the port)."""
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = bytes(value).decode("latin-1").lower()
            if host.startswith("["):  # [::1]:8233
                return host[1:].partition("]")[0]
            return host.rpartition(":")[0] if host.count(":") == 1 else host
    return ""


async def _refuse(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body})
