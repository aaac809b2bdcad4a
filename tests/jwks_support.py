"""Helpers for the verifier tests: raw JWS building and a controllable JWKS server.

The server is a real Starlette app on a real uvicorn (``tests.support.serve_app``) that
counts its fetches and can be told to misbehave: answer 500, hang, send garbage, a 1 MB
body or only a 1024-bit key, or answer slowly so concurrent requests pile up.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from jwtmcp.keys import rsa_kid, rsa_public_jwk_members
from tests.support import serve_app

ISSUER = "http://127.0.0.1:8000"
AUDIENCE = "http://127.0.0.1:9000/mcp"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A JSON value (or raw bytes) as a base64url segment."""
    if isinstance(value, bytes):
        return b64url(value)
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def rs256(key: rsa.RSAPrivateKey, signing_input: str) -> str:
    return b64url(key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()))


def jws(
    header: Any,
    payload: Any,
    key: rsa.RSAPrivateKey | None = None,
    *,
    signature: str | None = None,
) -> str:
    """A compact JWS from any header/payload (dicts, or raw bytes), RS256-signed by ``key``."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    if signature is None:
        signature = rs256(key, signing_input) if key is not None else ""
    return f"{signing_input}.{signature}"


def hs256(secret: bytes, header: Any, payload: Any) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def claims(now: float, **overrides: Any) -> dict[str, Any]:
    """Valid RFC 9068 claims at ``now``; ``overrides`` with value None remove a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "client_id": "alice",
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 300,
        "jti": "j-" + b64url(hashlib.sha256(str(now).encode()).digest()[:16]),
        "scope": "tool:add tool:read_*",
    }
    for name, value in overrides.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def header(kid: str | None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt"}
    if kid is not None:
        out["kid"] = kid
    out.update(extra)
    return out


_weak_key: rsa.RSAPrivateKey | None = None


def weak_jwk() -> dict[str, str]:
    """A public JWK of a 1024-bit RSA key (generated once per test run)."""
    global _weak_key
    if _weak_key is None:
        _weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    public = _weak_key.public_key()
    jwk = rsa_public_jwk_members(public)
    jwk.update(kid=rsa_kid(public), use="sig", alg="RS256")
    return jwk


class JwksServer:
    """A JWKS endpoint at ``/jwks`` whose behaviour a test switches with ``mode``.

    Modes: ``ok``, ``500``, ``hang`` (no answer until the test ends), ``garbage``,
    ``huge`` (a 1 MB body), ``weak`` (only a 1024-bit key), ``down`` (connection refused
    is had by stopping the server instead). ``delay`` slows ``ok`` answers down.
    ``gate`` holds every answer while it is clear (a fetch that stays in flight until the
    test sets it). ``extra_headers`` are added to ``ok`` answers as given (repeats make
    repeated field lines). The server sends no ``Date`` of its own: uvicorn's comes from the
    real clock, which means nothing to a verifier on a FakeClock; a test that needs one
    sends it.
    """

    def __init__(self, doc: dict[str, Any], *, cache_control: str | None = "max-age=300") -> None:
        self.doc = doc
        self.mode = "ok"
        self.cache_control = cache_control
        self.delay = 0.0
        self.extra_headers: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fetches = 0
        self.url = ""
        self._closing = threading.Event()
        self.app = Starlette(routes=[Route("/jwks", self._jwks), Route("/attacker", self._hit)])
        self.attacker_hits = 0

    async def _hit(self, request: Request) -> Response:
        self.attacker_hits += 1
        return Response("{}", media_type="application/json")

    async def _jwks(self, request: Request) -> Response:
        self.fetches += 1
        deadline = time.monotonic() + 30
        while not self.gate.is_set() and not self._closing.is_set():
            if time.monotonic() > deadline:
                return Response("gate never opened", status_code=503)
            await asyncio.sleep(0.01)
        mode = self.mode
        if mode == "500":
            return Response("internal error", status_code=500)
        if mode == "hang":
            deadline = time.monotonic() + 30
            while not self._closing.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return Response("too late", status_code=503)
        if mode == "garbage":
            return Response(b"\x00\xffnot json{", media_type="application/json")
        if mode == "huge":

            async def body() -> AsyncIterator[bytes]:
                yield b'{"keys": [], "pad": "'
                for _ in range(1024):
                    yield b"x" * 1024
                yield b'"}'

            return StreamingResponse(body(), media_type="application/json")
        if mode == "weak":
            return self._json({"keys": [weak_jwk()]})
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._json(self.doc)

    def _json(self, doc: dict[str, Any]) -> Response:
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        response = Response(json.dumps(doc), media_type="application/json", headers=headers)
        for name, value in self.extra_headers:
            response.raw_headers.append((name.lower().encode(), value.encode()))
        return response

    @contextmanager
    def running(self, port: int | None = None) -> Iterator[str]:
        with serve_app(self.app, port=port, date_header=False) as base:
            self.url = base + "/jwks"
            try:
                yield self.url
            finally:
                self._closing.set()
