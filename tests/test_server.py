"""Connection limits of the HTTP servers jwtmcp runs: request heads, slow clients, per address.

Every test talks raw HTTP/1.1 over a socket to a real server process on loopback: ``jwtmcp
serve`` and an MCP server started with ``protected_server(...).run("streamable-http")``
(scripts/math_server.py). Limits are set small through the ``JWTMCP_*`` variables so a slow
client is cut within a second; each check waits a bounded time, generous enough that load
on the machine cannot make it fail.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization

from jwtmcp.keys import init_ring
from tests.support import free_port, issuer_process, math_server

REPO = Path(__file__).resolve().parent.parent
SEND_CAP = 64 * 1024 * 1024
"""A client sends at most this much; a bounded server stops reading long before."""
ACCEPT_BOUND = 16 * 1024 * 1024
"""Bytes a bounded server may take in before it answers or closes: its limit plus what the
kernel's socket buffers hold (a few MiB on loopback)."""
CUT_WITHIN = 10.0
"""Seconds within which a server configured with a 1 s timeout must close a slow client."""

SMALL_LIMITS = {
    "JWTMCP_HEADER_TIMEOUT": "1",
    "JWTMCP_BODY_TIMEOUT": "1",
    "JWTMCP_MAX_CONNECTIONS_PER_CLIENT": "4",
}


# --- servers --------------------------------------------------------------------------------


@pytest.fixture
def issuer_url(tmp_path: Path) -> Iterator[str]:
    """``jwtmcp serve`` with its default limits."""
    with issuer_process(tmp_path / "issuer") as iss:
        yield iss.base_url


@pytest.fixture
def strict_issuer_url(tmp_path: Path) -> Iterator[str]:
    """``jwtmcp serve`` with 1 s head and body timeouts and 4 connections per address."""
    with issuer_process(tmp_path / "issuer", env=SMALL_LIMITS) as iss:
        yield iss.base_url


@contextlib.contextmanager
def mcp_server_process(directory: Path, env: dict[str, str]) -> Iterator[str]:
    """scripts/math_server.py (``protected_server(...).run("streamable-http")``) on loopback."""
    ring = init_ring(directory / "keys")
    pem = directory / "public.pem"
    pem.write_bytes(
        ring.active.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    port = free_port()
    child_env = {**env, "MCP_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
    )
    base = f"http://127.0.0.1:{port}"
    log = directory / "server.log"
    with math_server(f"{base}/mcp", log, child_env, ["--public-key", str(pem)]):
        yield base


@pytest.fixture
def mcp_url(tmp_path: Path) -> Iterator[str]:
    with mcp_server_process(tmp_path, {}) as url:
        yield url


@pytest.fixture
def strict_mcp_url(tmp_path: Path) -> Iterator[str]:
    with mcp_server_process(tmp_path, SMALL_LIMITS) as url:
        yield url


# --- raw HTTP -------------------------------------------------------------------------------


def connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=CUT_WITHIN)
    return sock


def answer_or_close(sock: socket.socket, seconds: float = CUT_WITHIN) -> bytes | None:
    """What the server sends before it closes (b"" when it closes silently or resets), or
    None when it neither answers nor closes within ``seconds``."""
    ready, _, _ = select.select([sock], [], [], seconds)
    if not ready:
        return None
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        sock.settimeout(2)
        while chunk := sock.recv(65536):
            data += chunk
    return data


def flood(base_url: str, head: bytes, line: bytes) -> tuple[int, bytes | None]:
    """Send ``head`` then ``line`` over and over (at most :data:`SEND_CAP` bytes), stopping
    when the server answers or closes. Returns (bytes the server took in, its answer)."""
    sock = connect(base_url)
    sent = 0
    chunk = line * max(1, 65536 // len(line))
    try:
        sock.sendall(head)
        sent += len(head)
        while sent < SEND_CAP:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return sent, answer_or_close(sock, 5.0)
    finally:
        sock.close()


def status_of(answer: bytes | None) -> int | None:
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


HEAD_FLOODS = {
    "one endless header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"a"),
    "endless header lines": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-A: 1\r\n"),
    "endless request target": (b"GET /", b"a"),
}


def assert_head_flood_is_cut(base_url: str, kind: str) -> None:
    head, line = HEAD_FLOODS[kind]
    sent, answer = flood(base_url, head, line)
    assert answer is not None, f"the server kept reading: {sent} bytes and no answer"
    assert sent < ACCEPT_BOUND, f"the server took in {sent} bytes of one request head"
    # 431 when it still reaches the client; a reset connection may swallow it.
    assert status_of(answer) in (431, None)


# --- request heads --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", HEAD_FLOODS)
def test_serve_stops_reading_an_endless_request_head(issuer_url: str, kind: str) -> None:
    assert_head_flood_is_cut(issuer_url, kind)


@pytest.mark.parametrize("kind", HEAD_FLOODS)
def test_protected_server_run_stops_reading_an_endless_request_head(
    mcp_url: str, kind: str
) -> None:
    assert_head_flood_is_cut(mcp_url, kind)


def test_a_head_over_the_size_limit_gets_431(issuer_url: str) -> None:
    sock = connect(issuer_url)
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n")
        assert status_of(answer_or_close(sock)) == 431


def test_more_header_lines_than_the_limit_get_431(issuer_url: str) -> None:
    sock = connect(issuer_url)
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n")
        assert status_of(answer_or_close(sock)) == 431


def test_an_ordinary_request_with_a_large_bearer_token_still_works(issuer_url: str) -> None:
    r = httpx2.get(
        f"{issuer_url}/healthz", headers={"Authorization": "Bearer " + "a" * 8000}, timeout=10
    )
    assert r.status_code == 200


# --- slow clients ---------------------------------------------------------------------------


def trickle(sock: socket.socket, data: bytes) -> bytes | None:
    """Send ``data`` one byte at a time, a fifth of a second apart, for at most
    :data:`CUT_WITHIN` seconds; return the server's answer once it answers or closes, or
    None when it is still waiting for more when the time is up."""
    deadline = time.monotonic() + CUT_WITHIN
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return b""
        if time.monotonic() > deadline:
            return None
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            return answer_or_close(sock, 1.0)
    return answer_or_close(sock, max(0.0, deadline - time.monotonic()))


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"


def slow_body(path: bytes) -> tuple[bytes, bytes]:
    body = b"grant_type=client_credentials&x=" + b"a" * 200
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head, body


def assert_cut(answer: bytes | None, status: int = 408) -> None:
    assert answer is not None, f"the server still waited after {CUT_WITHIN} s"
    assert status_of(answer) in (status, None)


def test_serve_cuts_a_client_that_sends_its_head_a_byte_at_a_time(strict_issuer_url: str) -> None:
    with connect(strict_issuer_url) as sock:
        assert_cut(trickle(sock, SLOW_HEAD))


def test_serve_cuts_a_client_that_sends_its_body_a_byte_at_a_time(strict_issuer_url: str) -> None:
    head, body = slow_body(b"/token")
    with connect(strict_issuer_url) as sock:
        sock.sendall(head)
        assert_cut(trickle(sock, body))


def test_serve_closes_a_connection_that_never_sends_a_request(strict_issuer_url: str) -> None:
    with connect(strict_issuer_url) as sock:
        assert answer_or_close(sock) is not None


def test_protected_server_run_cuts_slow_heads_and_bodies(strict_mcp_url: str) -> None:
    with connect(strict_mcp_url) as sock:
        assert_cut(trickle(sock, SLOW_HEAD.replace(b"/healthz", b"/mcp")))
    head, body = slow_body(b"/mcp")
    head = head.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer x\r\n")
    with connect(strict_mcp_url) as sock:
        sock.sendall(head)
        # The token is refused as soon as the head is in (401) or the body times out (408).
        answer = trickle(sock, body)
        assert answer is not None and status_of(answer) in (401, 408, None)


def test_serve_limits_connections_per_client_address(strict_issuer_url: str) -> None:
    held = [connect(strict_issuer_url) for _ in range(4)]
    try:
        for sock in held:  # each of the four is served
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert select.select([sock], [], [], CUT_WITHIN)[0]
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(strict_issuer_url) as fifth:
            fifth.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(answer_or_close(fifth)) in (429, None)
        held.pop().close()
        deadline = time.monotonic() + CUT_WITHIN
        status = None
        while status != 200 and time.monotonic() < deadline:
            # The closed one's place is free again once the server has seen it go.
            with contextlib.suppress(httpx2.HTTPError):
                status = httpx2.get(f"{strict_issuer_url}/healthz", timeout=CUT_WITHIN).status_code
            time.sleep(0.05)
        assert status == 200
    finally:
        for sock in held:
            sock.close()


def test_a_body_left_unsent_after_an_early_answer_is_closed_without_a_second_answer(
    strict_mcp_url: str,
) -> None:
    # No token: the server answers 401 before reading the body; the client then stalls.
    head, _ = slow_body(b"/mcp")
    with connect(strict_mcp_url) as sock:
        sock.sendall(head + b"grant_type")
        answer = answer_or_close(sock)
    assert answer is not None and status_of(answer) == 401
    assert answer.count(b"HTTP/1.1 ") == 1, answer


# --- ServerLimits in a uvicorn the application runs itself ------------------------------------


@contextlib.contextmanager
def own_uvicorn(options: dict[str, object]) -> Iterator[str]:
    """A plain ``uvicorn.Config`` built by the application with ``options``, in a thread."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **options))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + CUT_WITHIN
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(CUT_WITHIN)
        sock.close()


def test_uvicorn_options_apply_the_limits_of_the_object_they_come_from() -> None:
    from jwtmcp.server import ServerLimits

    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000 + b"\r\n\r\n"
    with own_uvicorn(ServerLimits(max_header_bytes=2048).uvicorn_options()) as url:
        sock = connect(url)
        with sock:
            sock.sendall(head)
            assert status_of(answer_or_close(sock)) == 431
    with own_uvicorn(ServerLimits().uvicorn_options()) as url:  # the default: 32 KiB
        sock = connect(url)
        with sock:
            sock.sendall(head)
            assert status_of(answer_or_close(sock)) == 200
