"""Running an ASGI app on uvicorn with bounds on what one client can make the server hold.

uvicorn's httptools protocol keeps every byte of a request head until the head ends, never
times out a client that trickles its head or body, and lets one address hold any number of
connections. :class:`HardenedHttpToolsProtocol` adds, per :class:`ServerLimits`:

- a request head (request line and headers) of at most ``max_header_bytes`` bytes and
  ``max_headers`` header lines, else ``431 Request Header Fields Too Large`` and close;
- ``header_timeout`` seconds from the first byte of a request (or the connection's opening)
  to the end of its head, and ``body_timeout`` seconds from there to the end of its body,
  else ``408 Request Timeout`` and close;
- ``max_connections_per_client`` open connections per client address, else ``429`` and
  close; ``max_connections`` in all (uvicorn's ``limit_concurrency``: ``503``).

``jwtmcp serve`` and the protected MCP servers' ``run()`` use :func:`serve_async` /
:func:`run`. Elsewhere, run uvicorn with ``uvicorn.Config(app, **ServerLimits().uvicorn_options())``
or ``uvicorn --http jwtmcp.server:HardenedHttpToolsProtocol ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .errors import ConfigError, ListenError
from .numeric import parse_decimal_number, parse_whole_number

log = logging.getLogger("jwtmcp.server")

ENV_PREFIX = "JWTMCP_"


@dataclass(frozen=True)
class ServerLimits:
    """What one client may make the server hold. Sizes in bytes, times in seconds.

    Every field can be set from the environment as ``JWTMCP_<FIELD IN CAPITALS>`` (see
    :meth:`from_environment`), e.g. ``JWTMCP_HEADER_TIMEOUT=5``.
    """

    max_header_bytes: int = 32 * 1024
    """Request line plus headers; a bearer token of a few KiB fits many times over."""
    max_headers: int = 100
    header_timeout: float = 10.0
    """From a connection's opening, or a request's first byte, to the end of its head."""
    body_timeout: float = 30.0
    """From the end of a request's head to the end of its body (not counting time the
    server itself stopped reading because the app was busy)."""
    max_connections_per_client: int = 64
    """Open connections from one address. Behind a reverse proxy every connection comes
    from the proxy's address: raise this to the proxy's own connection limit."""
    max_connections: int = 1000
    keep_alive_timeout: float = 5.0
    """Idle seconds between requests on a kept-alive connection (uvicorn's default)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"server limit {f.name} must be a positive number, not {value!r}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServerLimits:
        """The defaults, each overridden by ``JWTMCP_<NAME>`` when set and not empty.

        Raises :class:`ConfigError` for a value that is not a positive number written in
        ASCII digits.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = environ.get(name, "")
            if raw == "":
                continue
            try:
                whole = isinstance(f.default, int)
                values[f.name] = parse_whole_number(raw) if whole else parse_decimal_number(raw)
            except ValueError:
                raise ConfigError(
                    f"${name} must be a number written in ASCII digits, not {raw!r:.40}"
                ) from None
        return replace(cls(), **values)

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config`` that apply every field of this object:
        the hardened protocol bound to these limits (head size, header lines, timeouts,
        connections per address), no WebSocket, ``max_connections``, ``keep_alive_timeout``
        and, for ``--http h11``, ``max_header_bytes``. The protocol is a
        :func:`functools.partial`, so the config still pickles for ``workers > 1``.
        """
        return {
            "http": functools.partial(HardenedHttpToolsProtocol, limits=self),
            "ws": "none",  # no WebSocket upgrade: MCP speaks HTTP, and upgrades skip the limits
            "limit_concurrency": self.max_connections,
            "timeout_keep_alive": self.keep_alive_timeout,
            "h11_max_incomplete_event_size": self.max_header_bytes,
            # uvicorn believes X-Forwarded-For/-Proto from 127.0.0.1 by default: behind a
            # proxy that passes a client's own header on, every client could then name any
            # address (and escape per-address limits). Trusted proxies are opt-in:
            # $JWTMCP_FORWARDED_ALLOW_IPS (see proxy_options).
            "proxy_headers": False,
        }


FORWARDED_ALLOW_IPS_ENV = ENV_PREFIX + "FORWARDED_ALLOW_IPS"
"""Addresses or networks (comma-separated) of the reverse proxies whose ``X-Forwarded-For``
and ``X-Forwarded-Proto`` are believed; unset: none, the connection's peer is the client."""


def proxy_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``uvicorn.Config`` options for :data:`FORWARDED_ALLOW_IPS_ENV`: headers believed only
    from the proxies it names, none when it is unset or empty."""
    environ = os.environ if environ is None else environ
    proxies = environ.get(FORWARDED_ALLOW_IPS_ENV, "").strip()
    if not proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": proxies}


class HardenedConfig(uvicorn.Config):
    """A ``uvicorn.Config`` carrying :class:`ServerLimits` (it pickles for ``workers > 1``)."""

    def __init__(self, app: Any, *, limits: ServerLimits | None = None, **options: Any) -> None:
        self.limits = limits or ServerLimits.from_environment()
        super().__init__(app, **{**self.limits.uvicorn_options(), **proxy_options(), **options})


@functools.lru_cache(maxsize=1)
def _environment_limits() -> ServerLimits:
    return ServerLimits.from_environment()


_per_address: weakref.WeakKeyDictionary[ServerState, Counter[str]] = weakref.WeakKeyDictionary()
"""Open connections per client address, for each running server."""


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing a head over the limits."""


class _OneSendPerAnswer:
    """The transport one request's response cycle writes to.

    uvicorn writes a response's head and its body with two ``transport.write`` calls, so a
    small answer (a token) costs two ``send()`` system calls and two TCP segments, and the
    client two wake-ups. Here the cycle's first write waits for the next one and both leave
    in one ``send()``; what was held is written at the event loop's next turn at the latest
    (a streamed answer's head, an answer whose body is empty), or before the cycle closes
    the connection. Later writes go straight through.
    """

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif self._first:
            self._first = False
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write what is held now (nothing when the connection is closing)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`ServerLimits` applied (see the module)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Bound by uvicorn_options(), else carried by a HardenedConfig, else the environment
        # (``uvicorn --http jwtmcp.server:HardenedHttpToolsProtocol`` on the command line).
        limits = limits or getattr(config, "limits", None)
        self.limits = limits if isinstance(limits, ServerLimits) else _environment_limits()
        self._open = _per_address.setdefault(server_state, Counter())
        self._address: str | None = None
        self._in_head = True
        self._head_bytes = 0
        self._header_lines = 0
        self._head_size = 0  # target and header lines parsed so far (exact, unlike _head_bytes)
        self._refusing: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time the current head or body is due by

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None:
            if self._open[address] >= self.limits.max_connections_per_client:
                self._refuse(429, "too many connections from this address", b"retry-after: 1\r\n")
                return
            self._open[address] += 1
            self._address = address
        self._start_timer(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._address is not None:
            self._open[self._address] -= 1
            if self._open[self._address] <= 0:
                del self._open[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self._head_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse(431, "request head over the size limit")

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_lines = 0
        self._head_size = 0
        if self._deadline is None:
            self._start_timer(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_lines > self.limits.max_headers:
            self._stop(431, "more header lines than the limit")
        if self._head_size > self.limits.max_header_bytes:
            self._stop(431, "request head over the size limit")
        super().on_header(name, value)

    def _stop(self, status: int, reason: str) -> None:
        # An exception in a callback stops the parser; uvicorn then calls send_400_response.
        self._refusing = (status, reason)
        raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        if self._head_size > self.limits.max_header_bytes:
            self._stop(431, "request head over the size limit")
        self._in_head = False
        self._start_timer(self.limits.body_timeout)
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:
            cycle.transport = _OneSendPerAnswer(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._stop_timer()
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error with 400; a callback of ours stopped this one.
        if self._refusing is not None:
            status, reason = self._refusing
            self._refuse(status, reason)
        else:
            super().send_400_response(msg)

    # -- timeouts and refusals -------------------------------------------------------------

    # One timer per connection, not one per deadline: a request on a kept-alive connection
    # moves the deadline (head, then body, then none) without scheduling or cancelling
    # anything; the timer, when it fires early, sleeps again until the deadline.

    def _start_timer(self, seconds: float) -> None:
        """Time out ``seconds`` from now (replacing the current deadline)."""
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() <= deadline:
            return  # fires first, then waits for the rest
        if timer is not None:
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._timer_fired)

    def _stop_timer(self) -> None:
        self._deadline = None

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._timer_fired)
            return
        self._deadline = None
        self._timed_out()

    def _timed_out(self) -> None:
        if self.transport.is_closing():
            return
        if not self._in_head and self.flow.read_paused:
            # The server stopped reading (the app is behind): not the client's delay.
            self._start_timer(self.limits.body_timeout)
            return
        if self._in_head and self._head_bytes == 0:
            self.transport.close()  # opened and never sent a byte: nobody to answer
            return
        # A body still due after the app has answered (it did not need it) gets no second
        # answer: the connection just closes.
        answered = not self._in_head and self.cycle is not None and self.cycle.response_started
        self._refuse(408, "request not received in time", answer=not answered)

    def _refuse(self, status: int, reason: str, extra: bytes = b"", *, answer: bool = True) -> None:
        """Answer ``status`` (unless a response is under way) and close the connection."""
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        log.warning("%s: %d %s; closing the connection", client, status, reason)
        cycle = self.cycle
        responding = cycle is not None and cycle.response_started and not cycle.response_complete
        if answer and not responding:
            body = reason.encode("ascii") + b"\n"
            self.transport.write(
                STATUS_LINE[status]
                + b"content-type: text/plain; charset=utf-8\r\n"
                + b"content-length: "
                + str(len(body)).encode("ascii")
                + b"\r\nconnection: close\r\n"
                + extra
                + b"\r\n"
                + body
            )
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
        self.transport.close()


# --- running ---------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host``:``port``.

    Raises :class:`ListenError` (one line, no traceback) when the port is taken or the
    address cannot be used.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"cannot listen on {where}: the port is in use by another program; "
                "stop it or pick another port with --port"
            ) from None
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def serve_async(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServerLimits | None = None,
    **options: Any,
) -> None:
    """Serve ``app`` on ``host``:``port`` with ``limits`` until the server is stopped.

    ``limits`` defaults to :meth:`ServerLimits.from_environment`; ``options`` go to
    ``uvicorn.Config``. Raises :class:`ListenError` when the port cannot be bound.
    """
    config = HardenedConfig(app, host=host, port=port, limits=limits, **options)
    sock = bind_socket(host, port)
    with contextlib.closing(sock):
        await uvicorn.Server(config).serve(sockets=[sock])


def run(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServerLimits | None = None,
    workers: int = 1,
    sock: socket.socket | None = None,
    **options: Any,
) -> None:
    """Like :func:`serve_async`, blocking; ``workers > 1`` needs ``app`` as an import string
    (``"module:attribute"``, with ``factory=True`` for a factory). ``sock``: a socket from
    :func:`bind_socket` to serve on (bound early so a taken port fails before any set-up)."""
    config = HardenedConfig(app, host=host, port=port, limits=limits, workers=workers, **options)
    sock = sock or bind_socket(host, port)
    with contextlib.closing(sock):
        server = uvicorn.Server(config)
        if workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[sock]).run()
        else:
            server.run(sockets=[sock])
            if not server.started and not server.should_exit:
                raise ListenError("the server did not start; the log above says why")


__all__ = [
    "HardenedConfig",
    "HardenedHttpToolsProtocol",
    "ServerLimits",
    "bind_socket",
    "run",
    "serve_async",
]
