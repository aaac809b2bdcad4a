"""The networked store: Redis (or Valkey), shared by issuer replicas on several machines.

Every operation that reads and then writes runs as one Lua script (``EVALSHA``), which Redis
executes atomically: of several replicas racing to take one code or rotate one refresh token,
exactly one wins, as with :class:`~jwtmcp.store.sqlite.SqliteStore`'s write lock.

Times come from the injected clock and are passed into the scripts (never Redis ``TIME``),
and every record keeps its own logical expiry, checked against that time. Redis TTLs only
collect the garbage: each key gets one a second longer than its record can live, so nothing
grows without bound and nothing disappears while it still matters.

Keys (under ``prefix``, default ``jwtmcp:``); codes, refresh tokens, ``jti`` values, counter
and bucket keys appear only as SHA-256 digests:

- ``c:<code digest>`` (hash): an authorization code, then its tombstone; TTL: the code's,
  then 24 h once taken;
- ``f:<family id>`` (hash): a refresh-token family; TTL: until its idle or absolute end;
- ``r:<token digest>`` (string): the family a refresh token belongs to; TTL: the family's
  absolute end;
- ``fa``, ``fs:<subject>``, ``fc:<client id>`` (sorted sets, scored by the absolute end):
  families to list and revoke; TTL: the longest family's end;
- ``o:<key digest>`` (string): a replay window (``remember_once``); TTL: until its end;
- ``n:<key digest>`` (hash): a fixed-window counter (failed logins); TTL: the window;
- ``b:<key digest>`` (hash): a token bucket (``/token`` rate limits); TTL: until it would be
  full again (forgetting it then changes nothing).

Connection errors and timeouts (``socket_timeout``/``socket_connect_timeout``, 0.25 s by
default) raise :class:`~jwtmcp.errors.StoreUnavailable`; a command is never retried (a
retried ``take_code`` would look like reuse). A single Redis primary (or a Valkey one) is
assumed: Redis Cluster is not supported (the scripts touch keys they compute).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..errors import ConfigError, StoreError, StoreUnavailable
from ..tokens import Clock
from . import (
    DEFAULT_CODE_TOMBSTONE_TTL,
    MAX_CODE_TTL,
    ROTATED_TOKENS_KEPT,
    CodeRedemption,
    RefreshFamily,
    Rotation,
    RotationStatus,
    canonical_grant_json,
    digest,
    new_opaque_token,
    positive_seconds,
)

try:
    import redis as _redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - the extra is missing
    _redis = None  # type: ignore[assignment]

DEFAULT_PREFIX = "jwtmcp:"
DEFAULT_SOCKET_TIMEOUT = 0.25
"""Seconds a Redis command (or a connection attempt) may take before StoreUnavailable."""
REDIS_SCHEMES = ("redis", "rediss", "unix")
RETRY_AFTER = 2
"""Seconds a client is told to wait (``Retry-After``) while Redis cannot be reached."""

# --- Lua -------------------------------------------------------------------------------------

_LIB = r"""
local function fmt(n) return string.format('%.17g', n) end
local function ttl_of(seconds)
  local t = math.ceil(seconds) + 1
  if t < 1 then t = 1 end
  if t > 316224000 then t = 316224000 end
  return t
end
local function revoke_family(p, fid, now, reason, tomb)
  local k = p .. 'f:' .. fid
  if redis.call('EXISTS', k) == 1 then
    if not redis.call('HGET', k, 'ra') then
      redis.call('HSET', k, 'ra', now, 'rr', reason)
    end
  else
    -- Not started yet (the first redemption is still minting): a revoked placeholder, so
    -- start_family() refuses it when it comes.
    redis.call('HSET', k, 'id', fid, 'cid', '', 'sub', '', 'g', '{}', 'ca', now, 'lu', now,
      'it', '0', 'ae', now, 'gen', '0', 'ra', now, 'rr', reason,
      'x', fmt(tonumber(now) + tonumber(tomb)))
    redis.call('EXPIRE', k, ttl_of(tonumber(tomb)))
  end
end
local function insert_family(p, fid, th, cid, sub, g, now, idle, ae)
  local tk = p .. 'r:' .. th
  if redis.call('EXISTS', tk) == 1 then return false end
  local n, a = tonumber(now), tonumber(ae)
  local ends = math.min(a, n + tonumber(idle))
  redis.call('SET', tk, fid, 'EX', ttl_of(a - n))
  local k = p .. 'f:' .. fid
  redis.call('HSET', k, 'id', fid, 'cid', cid, 'sub', sub, 'g', g, 'ca', now, 'lu', now,
    'it', idle, 'ae', ae, 'gen', '0', 'cur', th, 'x', fmt(ends))
  redis.call('EXPIRE', k, ttl_of(ends - n))
  for _, ix in ipairs({p .. 'fa', p .. 'fs:' .. sub, p .. 'fc:' .. cid}) do
    redis.call('ZADD', ix, ae, fid)
    redis.call('ZREMRANGEBYSCORE', ix, '-inf', now)
    local want = ttl_of(a - n)
    if redis.call('TTL', ix) < want then redis.call('EXPIRE', ix, want) end
  end
  return true
end
"""

_PUT_CODE = r"""
local x = redis.call('HGET', KEYS[1], 'x')
if x and tonumber(x) > tonumber(ARGV[4]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'g', ARGV[1], 'f', ARGV[2], 'e', ARGV[3], 'x', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# ARGV: prefix, now, tombstone ttl, mode ('take' | 'redeem'), token digest, idle, absolute end
_CLAIM_CODE = r"""
local p, now = ARGV[1], ARGV[2]
local n = tonumber(now)
local h = redis.call('HMGET', KEYS[1], 'g', 'f', 'e', 't', 'x')
if not h[1] or tonumber(h[5]) <= n then return false end
if h[4] then
  revoke_family(p, h[2], now, 'authorization code reused', ARGV[3])
  return {'reused', h[1], h[2]}
end
if n >= tonumber(h[3]) then
  redis.call('DEL', KEYS[1])
  return false
end
if ARGV[4] == 'redeem' then
  local ok, grant = pcall(cjson.decode, h[1])
  if not ok or type(grant) ~= 'table' or type(grant['client_id']) ~= 'string'
      or type(grant['subject']) ~= 'string' then
    return {'incomplete'}
  end
  if not insert_family(p, h[2], ARGV[5], grant['client_id'], grant['subject'], h[1], now,
      ARGV[6], ARGV[7]) then
    return {'duplicate'}
  end
end
redis.call('HSET', KEYS[1], 't', now, 'x', fmt(n + tonumber(ARGV[3])))
redis.call('EXPIRE', KEYS[1], ttl_of(tonumber(ARGV[3])))
return {'won', h[1], h[2]}
"""

# ARGV: prefix, family id, now, token digest, client id, subject, grant, idle, absolute end
_START_FAMILY = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'ra') then return 'revoked' end
  return 'exists'
end
if not insert_family(ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[3], ARGV[8],
    ARGV[9]) then
  return 'duplicate'
end
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: prefix, now, old digest, new digest, client id, tombstone ttl, rotated tokens kept
_ROTATE = r"""
local p, now = ARGV[1], ARGV[2]
local n = tonumber(now)
local fid = redis.call('GET', KEYS[1])
if not fid then return false end
local k = p .. 'f:' .. fid
local f = {}
local raw = redis.call('HGETALL', k)
for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
if not f['cid'] then return false end
if f['ra'] then return {'revoked', raw} end
if f['cid'] ~= ARGV[5] or f['cur'] ~= ARGV[3] then
  local status, reason = 'reused', 'refresh token reused'
  if f['cid'] ~= ARGV[5] then
    status, reason = 'wrong_client', 'refresh token presented by another client'
  end
  revoke_family(p, fid, now, reason, ARGV[6])
  return {status, redis.call('HGETALL', k)}
end
local a = tonumber(f['ae'])
if n >= math.min(a, tonumber(f['lu']) + tonumber(f['it'])) then
  return {'expired', raw}
end
local nk = p .. 'r:' .. ARGV[4]
if redis.call('EXISTS', nk) == 1 then return {'duplicate'} end
redis.call('SET', nk, fid, 'EX', ttl_of(a - n))
-- The most recent rotated-away token digests (64 hex digits each): older ones are forgotten.
local hist = (f['h'] or '') .. ARGV[3]
while #hist > 64 * tonumber(ARGV[7]) do
  redis.call('DEL', p .. 'r:' .. string.sub(hist, 1, 64))
  hist = string.sub(hist, 65)
end
local ends = math.min(a, n + tonumber(f['it']))
redis.call('HSET', k, 'cur', ARGV[4], 'gen', tostring(tonumber(f['gen']) + 1), 'lu', now,
  'x', fmt(ends), 'h', hist)
redis.call('EXPIRE', k, ttl_of(ends - n))
return {'rotated', redis.call('HGETALL', k)}
"""

_FIND = r"""
local fid = redis.call('GET', KEYS[1])
if not fid then return false end
local raw = redis.call('HGETALL', ARGV[1] .. 'f:' .. fid)
if #raw == 0 then return false end
return raw
"""

# ARGV: prefix, now, reason, family id, subject, client id, then '1'/'0': which are given
_REVOKE = r"""
local p, now = ARGV[1], ARGV[2]
local n = tonumber(now)
local candidates
if ARGV[7] == '1' then candidates = {ARGV[4]}
elseif ARGV[8] == '1' then candidates = redis.call('ZRANGE', p .. 'fs:' .. ARGV[5], 0, -1)
else candidates = redis.call('ZRANGE', p .. 'fc:' .. ARGV[6], 0, -1) end
local count = 0
for _, fid in ipairs(candidates) do
  local k = p .. 'f:' .. fid
  local f = redis.call('HMGET', k, 'cid', 'sub', 'ae', 'lu', 'it', 'ra')
  if f[1] and not f[6]
      and (ARGV[8] ~= '1' or f[2] == ARGV[5]) and (ARGV[9] ~= '1' or f[1] == ARGV[6])
      and math.min(tonumber(f[3]), tonumber(f[4]) + tonumber(f[5])) > n then
    redis.call('HSET', k, 'ra', now, 'rr', ARGV[3])
    count = count + 1
  end
end
return count
"""

# ARGV: now, until, ttl
_REMEMBER_ONCE = r"""
local u = redis.call('GET', KEYS[1])
if u and tonumber(u) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

# ARGV: now, window, ttl
_COUNT = r"""
local n = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'v', 'e')
if not h[2] or tonumber(h[2]) <= n then
  redis.call('HSET', KEYS[1], 'v', 1, 'e', fmt(n + tonumber(ARGV[2])))
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return redis.call('HINCRBY', KEYS[1], 'v', 1)
"""

# ARGV: now. One back from a counter whose window is open, never below 0.
_UNCOUNT = r"""
local h = redis.call('HMGET', KEYS[1], 'v', 'e')
if h[2] and tonumber(h[2]) > tonumber(ARGV[1]) and tonumber(h[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'v', -1)
end
return 1
"""

# ARGV: now, rate (per second), burst, ttl. Returns the seconds to wait ('0': allowed).
_TAKE_FROM_BUCKET = r"""
local n, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 't', 'l')
local tokens, last = burst, n
if h[1] then tokens, last = tonumber(h[1]), tonumber(h[2]) end
tokens = math.min(burst, tokens + math.max(0, n - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
-- Replicas' clocks differ a little: time never runs backwards for a bucket.
local stamp = math.max(n, last)
redis.call('HSET', KEYS[1], 't', fmt(tokens), 'l', fmt(stamp),
  'x', fmt(stamp + (burst - tokens) / rate))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return fmt(wait)
"""

# KEYS: a batch from SCAN; ARGV: prefix, now. Deletes the records past their logical end.
_PURGE = r"""
local p, n = ARGV[1], tonumber(ARGV[2])
local plen = #p
local removed = 0
for _, k in ipairs(KEYS) do
  local kind = string.sub(k, plen + 1, plen + 2)
  local gone = false
  if kind == 'c:' or kind == 'f:' or kind == 'b:' then
    local x = redis.call('HGET', k, 'x')
    gone = x and tonumber(x) <= n
  elseif kind == 'n:' then
    local e = redis.call('HGET', k, 'e')
    gone = e and tonumber(e) <= n
  elseif kind == 'o:' then
    local u = redis.call('GET', k)
    gone = u and tonumber(u) <= n
  elseif kind == 'r:' then
    local fid = redis.call('GET', k)
    if fid then
      local x = redis.call('HGET', p .. 'f:' .. fid, 'x')
      gone = (not x) or tonumber(x) <= n
    end
  elseif kind == 'fa' or kind == 'fs' or kind == 'fc' then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', ARGV[2])
  end
  if gone then
    redis.call('DEL', k)
    removed = removed + 1
  end
end
return removed
"""


def _seconds(value: float) -> str:
    """A time or duration as a Lua script reads it back exactly (``repr`` of the float)."""
    return repr(float(value))


MAX_KEY_TTL = 10 * 366 * 24 * 3600
"""No key is kept longer than about ten years, whatever time a caller names."""


def _key_ttl(seconds: float) -> int:
    """A Redis TTL (whole seconds) one second longer than ``seconds``, from 1 to
    :data:`MAX_KEY_TTL` (Redis refuses an expiry past its 64-bit millisecond clock)."""
    if not seconds < MAX_KEY_TTL:  # also NaN
        return MAX_KEY_TTL
    return max(1, math.ceil(seconds) + 1)


def _from_json(text: bytes | str) -> Mapping[str, Any]:
    value = json.loads(text)
    return MappingProxyType(value if isinstance(value, dict) else {})


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _family(raw: Sequence[bytes]) -> RefreshFamily:
    """A :class:`RefreshFamily` from a family hash's ``HGETALL`` reply."""
    fields = {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}
    revoked = fields.get("ra")
    reason = fields.get("rr")
    return RefreshFamily(
        family_id=_text(fields["id"]),
        client_id=_text(fields["cid"]),
        subject=_text(fields["sub"]),
        grant=_from_json(fields["g"]),
        created_at=float(fields["ca"]),
        last_used_at=float(fields["lu"]),
        idle_ttl=float(fields["it"]),
        absolute_expires_at=float(fields["ae"]),
        generation=int(fields["gen"]),
        revoked_at=None if revoked is None else float(revoked),
        revoked_reason=None if reason is None else _text(reason),
    )


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, rest after its "@")`` when ``url`` has a ``user:password@`` part,
    taken up to the **last** ``@``: a password holding an unencoded ``/``, ``?`` or ``#``
    (``openssl rand -base64`` makes them) ends a URL parser's authority early, and the
    rest of the password would then be read as a port, a path or a query."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return None
    userinfo = rest[:at]
    if ":" not in userinfo or userinfo.startswith("/"):  # unix:///path@with-at: no password
        return None
    return scheme, userinfo, rest[at + 1 :]


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to print or log, even
    when the password holds characters that should have been percent-encoded."""
    found = _userinfo(url)
    if found is None:
        return url
    scheme, userinfo, rest = found
    user = userinfo.split(":", 1)[0]
    if any(c in user for c in "/?#"):
        user = ""
    return f"{scheme}://{user}:***@{rest}"


def _password_pieces(url: str) -> list[str]:
    """The password of ``url`` and its pieces between reserved characters (3 characters or
    more): what an error message from a URL parser might quote."""
    found = _userinfo(url)
    if found is None:
        return []
    password = found[1].split(":", 1)[1]
    pieces = {password, unquote(password), *re.split(r"[^A-Za-z0-9._~-]+", password)}
    return sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True)


def _scrub_url(message: str, url: str) -> str:
    """``message`` with every piece of ``url``'s password replaced by ``***``."""
    for piece in _password_pieces(url):
        message = message.replace(piece, "***")
    return message


def is_redis_url(location: str) -> bool:
    """True when ``location`` names a Redis server: ``redis://``, ``rediss://``, ``unix://``."""
    return location.split("://", 1)[0].lower() in REDIS_SCHEMES and "://" in location


class RedisStore:
    """:class:`~jwtmcp.store.Store` on a Redis (or Valkey) server at ``url``.

    ``url`` is ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix://[[user]:password@]/path/to/socket[?db=N]``, with the redis-py query options
    (``socket_timeout``, ``socket_connect_timeout``, ``ssl_ca_certs``...), plus ``prefix``
    (the key prefix; default ``jwtmcp:``). ``clock`` gives epoch seconds for every TTL.
    ``socket_timeout`` (seconds) bounds each command and connection attempt unless the URL
    sets its own; past it, or when Redis refuses the connection, calls raise
    :class:`~jwtmcp.errors.StoreUnavailable`. ``code_tombstone_ttl`` (seconds): how long a
    redeemed code is remembered. Nothing connects until the first call. Safe for several
    threads; a forked child gets its own connections (redis-py's pool checks the PID).
    Raises :class:`~jwtmcp.errors.ConfigError` for an invalid URL or a missing redis-py.
    """

    networked = True
    """Several machines share this store: rate limits go through it (:meth:`take_token`)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = time.time,
        prefix: str | None = None,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        code_tombstone_ttl: float = DEFAULT_CODE_TOMBSTONE_TTL,
    ) -> None:
        if _redis is None:
            raise ConfigError("the Redis store needs redis-py: pip install 'jwtmcp[redis]'")
        self.location = redact_url(url)
        self._pieces = _password_pieces(url)
        if not is_redis_url(url):
            raise ConfigError(
                f"a Redis store location is redis://, rediss:// or unix://, not {self.location}"
            )
        parts = urlsplit(url)
        found = _userinfo(url)
        if found is not None and "@" not in parts.netloc:
            raise ConfigError(
                f"the Redis store URL {self.location} has a password (or user name) with "
                "an unencoded / ? or #: percent-encode them (%2F %3F %23; @ as %40), e.g. "
                "with python3 -c 'import urllib.parse,sys; "
                "print(urllib.parse.quote(sys.argv[1], safe=\"\"))' PASSWORD"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        url_prefix = [v for k, v in query if k == "prefix"]
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        if prefix is None:
            prefix = url_prefix[-1] if url_prefix else DEFAULT_PREFIX
        self.prefix: str = prefix
        self._clock = clock
        self._tombstone_ttl = positive_seconds("code_tombstone_ttl", code_tombstone_ttl)
        timeout = positive_seconds("socket_timeout", socket_timeout)
        # Not urlunsplit: it drops the "//" of unix:///path (an empty host).
        plain = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
        try:
            self._redis = _redis.Redis.from_url(
                plain,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"invalid Redis store URL {self.location}: {_scrub_url(str(exc), url)}"
            ) from None
        register = self._redis.register_script
        self._put_code = register(_LIB + _PUT_CODE)
        self._claim_code = register(_LIB + _CLAIM_CODE)
        self._start_family = register(_LIB + _START_FAMILY)
        self._rotate = register(_LIB + _ROTATE)
        self._find = register(_FIND)
        self._revoke = register(_REVOKE)
        self._remember_once = register(_REMEMBER_ONCE)
        self._count = register(_LIB + _COUNT)
        self._uncount = register(_UNCOUNT)
        self._take_from_bucket = register(_LIB + _TAKE_FROM_BUCKET)
        self._purge = register(_PURGE)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}{name}"

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        """Turn redis-py's errors into the store's (messages without the URL's password)."""
        try:
            yield
        except (_redis.exceptions.DataError, _redis.exceptions.NoScriptError) as exc:
            raise StoreError(
                f"the Redis store {self.location} refused a call: {self._scrub(exc)}"
            ) from None
        except _redis.exceptions.RedisError as exc:
            raise StoreUnavailable(
                f"the Redis store {self.location} is unavailable: {self._scrub(exc)}",
                retry_after=RETRY_AFTER,
            ) from None

    def _scrub(self, exc: BaseException) -> str:
        message = str(exc)
        for piece in self._pieces:
            message = message.replace(piece, "***")
        return message

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> None:
        """Reach the server once; raises :class:`~jwtmcp.errors.StoreUnavailable` if it cannot."""
        with self._calling():
            self._redis.ping()

    # --- authorization codes (OAuth 2.1 4.1.3) -----------------------------------------

    def put_code(self, code: str, grant: Mapping[str, Any], *, ttl: float) -> None:
        ttl = positive_seconds("a code's ttl", ttl)
        if ttl > MAX_CODE_TTL:
            raise ConfigError(f"an authorization code lives at most {MAX_CODE_TTL} s, not {ttl}")
        grant_json = canonical_grant_json(grant)
        now = self._clock()
        with self._calling():
            stored = self._put_code(
                keys=[self._key("c:", digest(code))],
                args=[grant_json, new_opaque_token(), _seconds(now + ttl), _seconds(now),
                      _key_ttl(ttl)],
            )
        if not stored:
            raise StoreError("this authorization code was issued already")

    def take_code(self, code: str) -> CodeRedemption | None:
        return self._claim(code, "take", "", 0.0, 0.0)

    def redeem_code(
        self, code: str, refresh_token: str, *, idle_ttl: float, absolute_ttl: float
    ) -> CodeRedemption | None:
        idle = positive_seconds("the refresh idle lifetime", idle_ttl)
        absolute = positive_seconds("the refresh absolute lifetime", absolute_ttl)
        return self._claim(code, "redeem", digest(refresh_token), idle, absolute)

    def _claim(
        self, code: str, mode: str, token_hash: str, idle: float, absolute: float
    ) -> CodeRedemption | None:
        now = self._clock()
        with self._calling():
            answer = self._claim_code(
                keys=[self._key("c:", digest(code))],
                args=[self.prefix, _seconds(now), _seconds(self._tombstone_ttl), mode,
                      token_hash, _seconds(idle), _seconds(now + absolute)],
            )
        if answer is None:
            return None
        status = _text(answer[0])
        if status == "incomplete":
            raise StoreError("a code redeemed with a refresh token needs client_id and subject")
        if status == "duplicate":
            raise StoreError("this refresh token was issued already")
        return CodeRedemption(_from_json(answer[1]), _text(answer[2]), reused=status == "reused")

    # --- refresh-token families (OAuth 2.1 4.3.1, RFC 9700 4.14.2) -------------------

    def start_family(
        self,
        family_id: str,
        refresh_token: str,
        *,
        client_id: str,
        subject: str,
        grant: Mapping[str, Any],
        idle_ttl: float,
        absolute_ttl: float,
    ) -> RefreshFamily | None:
        idle = positive_seconds("the refresh idle lifetime", idle_ttl)
        absolute = positive_seconds("the refresh absolute lifetime", absolute_ttl)
        if not family_id:
            raise StoreError("a refresh family needs an id (from take_code)")
        grant_json = canonical_grant_json(grant)
        now = self._clock()
        with self._calling():
            answer = self._start_family(
                keys=[self._key("f:", family_id)],
                args=[self.prefix, family_id, _seconds(now), digest(refresh_token), client_id,
                      subject, grant_json, _seconds(idle), _seconds(now + absolute)],
            )
        if isinstance(answer, bytes):
            status = _text(answer)
            if status == "revoked":
                return None
            if status == "exists":
                raise StoreError("this refresh family was started already")
            raise StoreError("this refresh token was issued already")
        return _family(answer)

    def rotate_refresh(
        self, refresh_token: str, new_refresh_token: str, *, client_id: str
    ) -> Rotation | None:
        old_hash, new_hash = digest(refresh_token), digest(new_refresh_token)
        if old_hash == new_hash:
            raise StoreError("the new refresh token must differ from the old one")
        now = self._clock()
        with self._calling():
            answer = self._rotate(
                keys=[self._key("r:", old_hash)],
                args=[self.prefix, _seconds(now), old_hash, new_hash, client_id,
                      _seconds(self._tombstone_ttl), ROTATED_TOKENS_KEPT],
            )
        if answer is None:
            return None
        status = _text(answer[0])
        if status == "duplicate":
            raise StoreError("the new refresh token was issued already")
        rotation_status: RotationStatus = status  # type: ignore[assignment]
        return Rotation(rotation_status, _family(answer[1]))

    def find_refresh(self, refresh_token: str) -> RefreshFamily | None:
        with self._calling():
            answer = self._find(
                keys=[self._key("r:", digest(refresh_token))], args=[self.prefix]
            )
        return None if answer is None else _family(answer)

    def list_families(
        self, *, subject: str | None = None, client_id: str | None = None
    ) -> Sequence[RefreshFamily]:
        if subject is not None:
            index = self._key("fs:", subject)
        elif client_id is not None:
            index = self._key("fc:", client_id)
        else:
            index = self._key("fa", "")
        now = self._clock()
        with self._calling():
            ids = cast(list[bytes], self._redis.zrange(index, 0, -1))
            pipe = self._redis.pipeline(transaction=False)
            for family_id in ids:
                pipe.hgetall(self._key("f:", _text(family_id)))
            replies = pipe.execute() if ids else []
        families = []
        for reply in replies:
            if not reply:
                continue
            raw = [item for pair in reply.items() for item in pair]
            family = _family(raw)
            if not family.active(now):
                continue
            if subject is not None and family.subject != subject:
                continue
            if client_id is not None and family.client_id != client_id:
                continue
            families.append(family)
        families.sort(key=lambda f: (f.created_at, f.family_id))
        return tuple(families)

    def revoke_families(
        self,
        *,
        family_id: str | None = None,
        subject: str | None = None,
        client_id: str | None = None,
        reason: str = "revoked",
    ) -> int:
        if family_id is None and subject is None and client_id is None:
            raise StoreError("say which refresh families to revoke (a family, user or client)")
        now = self._clock()
        given = ["0" if v is None else "1" for v in (family_id, subject, client_id)]
        with self._calling():
            count = self._revoke(
                args=[self.prefix, _seconds(now), reason, family_id or "", subject or "",
                      client_id or "", *given],
            )
        return int(count)

    # --- replay windows, counters, token buckets ---------------------------------------

    def remember_once(self, key: str, until: float) -> bool:
        now = self._clock()
        with self._calling():
            first = self._remember_once(
                keys=[self._key("o:", digest(key))],
                args=[_seconds(now), _seconds(until), _key_ttl(float(until) - now)],
            )
        return bool(first)

    def count(self, key: str, *, window: float) -> int:
        length = positive_seconds("a counter's window", window)
        now = self._clock()
        with self._calling():
            value = self._count(
                keys=[self._key("n:", digest(key))],
                args=[_seconds(now), _seconds(length), _key_ttl(length)],
            )
        return int(value)

    def peek_count(self, key: str) -> int:
        now = self._clock()
        with self._calling():
            value, ends = self._redis.hmget(self._key("n:", digest(key)), ["v", "e"])
        if value is None or ends is None or float(ends) <= now:
            return 0
        return int(value)

    def reset_count(self, key: str) -> None:
        with self._calling():
            self._redis.delete(self._key("n:", digest(key)))

    def uncount(self, key: str) -> None:
        now = self._clock()
        with self._calling():
            self._uncount(keys=[self._key("n:", digest(key))], args=[_seconds(now)])

    def take_token(self, key: str, *, rate: float, burst: int) -> float:
        rate = positive_seconds("a bucket's rate", rate)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"a bucket's burst must be a whole number >= 1, not {burst!r}")
        now = self._clock()
        with self._calling():
            wait = self._take_from_bucket(
                keys=[self._key("b:", digest(key))],
                args=[_seconds(now), _seconds(rate), burst, _key_ttl(burst / rate)],
            )
        return float(wait)

    # --- housekeeping ----------------------------------------------------------------

    def purge_expired(self) -> int:
        now = self._clock()
        removed = 0
        with self._calling():
            for batch in self._scan_batches():
                removed += int(self._purge(keys=batch, args=[self.prefix, _seconds(now)]))
        return removed

    def _scan_batches(self, size: int = 200) -> Iterator[list[bytes]]:
        pattern = self.prefix.replace("\\", "\\\\")
        for special in "*?[]":
            pattern = pattern.replace(special, "\\" + special)
        batch: list[bytes] = []
        for key in self._redis.scan_iter(match=pattern + "*", count=size):
            batch.append(key)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def key_names(self) -> list[str]:
        """Every key under the prefix (for tests and diagnostics; SCAN, not KEYS)."""
        with self._calling():
            return sorted(_text(k) for batch in self._scan_batches() for k in batch)
