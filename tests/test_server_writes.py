"""How jwtmcp's HTTP server writes an answer: a small answer's head and body in one send().

The unit tests drive the response cycle's transport wrapper on a real event loop, over a
transport that records what reaches the socket. The server test runs the hardened protocol
on a real uvicorn server on loopback and checks that a streamed answer's head is not held
back until its body (server-sent events depend on it).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from jwtmcp.server import ServerLimits, _OneSendPerAnswer

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"
WAIT = 10.0
"""Seconds a check waits for the server; generous, so load cannot make it fail."""


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket: keeps every write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def _one_turn() -> None:
    await asyncio.sleep(0)


def test_a_head_and_the_body_after_it_leave_in_one_write() -> None:
    async def scenario() -> list[bytes]:
        transport = RecordingTransport()
        wrapper = _OneSendPerAnswer(transport, asyncio.get_running_loop())
        wrapper.write(HEAD)
        wrapper.write(b"body")
        await _one_turn()
        return transport.writes

    assert asyncio.run(scenario()) == [HEAD + b"body"]


def test_a_head_without_a_body_yet_is_written_at_the_next_turn_of_the_loop() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        transport = RecordingTransport()
        wrapper = _OneSendPerAnswer(transport, asyncio.get_running_loop())
        wrapper.write(HEAD)
        before = list(transport.writes)
        await _one_turn()
        return before, transport.writes

    before, after = asyncio.run(scenario())
    assert (before, after) == ([], [HEAD])


def test_writes_after_the_first_two_go_straight_through() -> None:
    async def scenario() -> list[bytes]:
        transport = RecordingTransport()
        wrapper = _OneSendPerAnswer(transport, asyncio.get_running_loop())
        for chunk in (HEAD, b"a", b"b"):
            wrapper.write(chunk)
        return transport.writes

    assert asyncio.run(scenario()) == [HEAD + b"a", b"b"]


def test_closing_writes_the_held_head_first() -> None:
    async def scenario() -> tuple[list[bytes], bool]:
        transport = RecordingTransport()
        wrapper = _OneSendPerAnswer(transport, asyncio.get_running_loop())
        wrapper.write(HEAD)
        wrapper.close()
        await _one_turn()
        return transport.writes, transport.closed

    assert asyncio.run(scenario()) == ([HEAD], True)


def test_nothing_is_written_to_a_connection_that_closed_meanwhile() -> None:
    async def scenario() -> list[bytes]:
        transport = RecordingTransport()
        wrapper = _OneSendPerAnswer(transport, asyncio.get_running_loop())
        wrapper.write(HEAD)
        transport.closed = True  # the client went away before the loop turned
        await _one_turn()
        return transport.writes

    assert asyncio.run(scenario()) == []


# --- on a real server ----------------------------------------------------------------------


@pytest.fixture
def streaming_server() -> Iterator[tuple[int, threading.Event]]:
    """A hardened uvicorn server whose app sends its head, then its body once released."""
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        while not release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"data: done\n\n"})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            **ServerLimits().uvicorn_options())
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(int(WAIT / 0.01)):
            if server.started:
                break
            threading.Event().wait(0.01)
        yield sock.getsockname()[1], release
    finally:
        release.set()
        server.should_exit = True
        thread.join(WAIT)


def test_a_streamed_answers_head_reaches_the_client_before_its_body(
    streaming_server: tuple[int, threading.Event],
) -> None:
    port, release = streaming_server
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(b"GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = client.recv(4096)
            assert chunk, "the server closed the connection before the head"
            received += chunk
        head_alone = b"data: done" not in received
        release.set()
        while b"data: done" not in received:
            chunk = client.recv(4096)
            assert chunk, "the server closed the connection before the body"
            received += chunk
    assert head_alone
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
