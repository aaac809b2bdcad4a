"""Ring keys inside AWS KMS (``boto3``): ``CreateKey``, ``GetPublicKey``, ``Sign``.

A key is made by ``CreateKey`` (``KeySpec`` ``RSA_2048``/``RSA_3072``/``RSA_4096``,
``KeyUsage`` ``SIGN_VERIFY``); its handle is the KMS ``KeyId``. Tokens are signed by
``Sign`` with ``RSASSA_PKCS1_V1_5_SHA_256`` over the JWS signing input itself
(``MessageType`` ``RAW``); an input above KMS's 4096-byte limit for RAW messages (a token
with many extra claims) is sent as its SHA-256 (``MessageType`` ``DIGEST``), which gives the
same signature. Pruned and revoked keys get ``ScheduleKeyDeletion`` (7 days, the shortest
window AWS allows; ``CancelKeyDeletion`` undoes it).

Settings (the ring's ``backends.kms`` object), all optional: ``region`` and ``profile``
(else the standard AWS settings: ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE``,
``~/.aws/config``), ``endpoint_url`` (a KMS-compatible endpoint, e.g. an emulator or a VPC
endpoint) and ``timeout`` (seconds for connecting and for an answer, default 5; one retry,
:data:`ATTEMPTS`). Credentials
always come from the standard AWS chain (environment, profile, instance or pod role), never
from the ring.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import KeyRingError, SignerUnavailable
from . import HandleSigner

try:
    import boto3  # type: ignore[import-untyped]
    import botocore.config  # type: ignore[import-untyped]
    import botocore.exceptions  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the error names the extra to install
    boto3 = None

NAME = "kms"
SIGNING_ALGORITHM = "RSASSA_PKCS1_V1_5_SHA_256"
MAX_RAW_MESSAGE = 4096
"""The longest message KMS ``Sign`` takes with ``MessageType`` RAW (bytes)."""
DEFAULT_TIMEOUT = 5.0
ATTEMPTS = 2
"""Calls per KMS request: the first and one retry (botocore ``standard`` mode). A KMS that
does not answer holds a call for at most ``ATTEMPTS * 2 * timeout`` seconds (connecting,
then waiting for the answer, each up to ``timeout``) plus the pause before the retry
(under 0.05 s after a network error, under 1 s after throttling, at most 5 s more when KMS
asks with ``x-amz-retry-after``)."""
DELETION_WINDOW_DAYS = 7
RETRY_AFTER = 5

T = TypeVar("T")

_UNAVAILABLE_CODES = frozenset(
    {
        "DependencyTimeoutException",
        "KMSInternalException",
        "KeyUnavailableException",
        "ThrottlingException",
        "LimitExceededException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def _check_endpoint(url: str) -> None:
    """Raise :class:`KeyRingError` (one line, naming ``endpoint_url``) unless ``url`` is an
    ``http``/``https`` URL with a host, a port (if any) in 1-65535, no user or password
    (credentials come from the AWS chain only), no query or fragment and no whitespace or
    control character. Checked when the backend is built, so a bad ``--kms-endpoint-url``
    or ``ring.json`` fails before any KMS call and never as a bare ``ValueError``."""
    wanted = (
        "the kms key backend's 'endpoint_url' must be an http:// or https:// URL with a "
        "host and a port in 1-65535"
    )
    if any(c.isspace() or not c.isprintable() for c in url):
        raise KeyRingError(f"{wanted}, without spaces or control characters: got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise KeyRingError(f"{wanted}: got {url!r}") from None
    if parts.username is not None or parts.password is not None:
        raise KeyRingError(
            "the kms key backend's 'endpoint_url' must not hold a user or password "
            "(AWS credentials come from the environment, a profile or a role)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KeyRingError(f"{wanted}: got {url!r}")
    if port is not None and not 1 <= port <= 65535:
        raise KeyRingError(f"{wanted}: got {url!r}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise KeyRingError(f"{wanted}, without a query or fragment: got {url!r}")


class KmsBackend:
    """The ``kms`` :class:`~jwtmcp.signers.KeyBackend`: one KMS client per process."""

    name = NAME

    def __init__(self, settings: Mapping[str, Any]) -> None:
        if boto3 is None:
            raise KeyRingError("the kms key backend needs boto3: pip install 'jwtmcp[kms]'")
        for name in ("region", "profile", "endpoint_url"):
            value = settings.get(name)
            if value is not None and (not isinstance(value, str) or not value):
                raise KeyRingError(f"the kms key backend's {name!r} must be a non-empty string")
        if settings.get("endpoint_url") is not None:
            _check_endpoint(settings["endpoint_url"])
        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout <= 120
        ):
            raise KeyRingError("the kms key backend's 'timeout' must be 0 < seconds <= 120")
        self.region: str | None = settings.get("region")
        self.profile: str | None = settings.get("profile")
        self.endpoint_url: str | None = settings.get("endpoint_url")
        self.timeout = float(timeout)
        self._client: Any = None
        self._lock = threading.Lock()
        self.monotonic: Callable[[], float] = time.monotonic
        """Seconds from any origin, for the fail-fast window (tests set a fake clock)."""
        self._down_until = 0.0
        self._down_reason = ""

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("region", "profile", "endpoint_url"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.timeout != DEFAULT_TIMEOUT:
            out["timeout"] = self.timeout
        return out

    def _where(self) -> str:
        return f"AWS KMS at {self.endpoint_url}" if self.endpoint_url else "AWS KMS"

    def client(self) -> Any:
        """The boto3 KMS client (made once; boto3 clients are thread-safe)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        # AWS_REGION is the SDKs' common name; boto3 itself reads
                        # AWS_DEFAULT_REGION (and the profile's region) when it is unset.
                        region = self.region or os.environ.get("AWS_REGION") or None
                        session = boto3.session.Session(
                            region_name=region, profile_name=self.profile
                        )
                        self._client = session.client(
                            "kms",
                            endpoint_url=self.endpoint_url,
                            config=botocore.config.Config(
                                connect_timeout=self.timeout,
                                read_timeout=self.timeout,
                                # botocore's "max_attempts" counts retries (2 made 3
                                # calls); "total_max_attempts" counts calls, and beats
                                # AWS_MAX_ATTEMPTS / AWS_RETRY_MODE in the environment.
                                retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
                            ),
                        )
                    except botocore.exceptions.NoRegionError:
                        raise KeyRingError(
                            "the kms key backend needs a region: set AWS_REGION (or "
                            "AWS_DEFAULT_REGION), or give the ring one (--kms-region)"
                        ) from None
                    except botocore.exceptions.BotoCoreError as exc:
                        raise KeyRingError(
                            f"cannot set up the {self._where()} client: {exc}"
                        ) from None
        return self._client

    def _call(self, what: str, action: Callable[[Any], T]) -> T:
        """``action(client)``; KMS and network failures become one-line errors:
        :class:`SignerUnavailable` for what may pass, :class:`KeyRingError` for the rest."""
        client = self.client()
        try:
            return action(client)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "error"))
            message = str(error.get("Message", ""))[:200]
            reason = f"{self._where()} could not {what}: {code}"
            if message:
                reason += f" ({message})"
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
            if code in _UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
                raise SignerUnavailable(reason, retry_after=RETRY_AFTER) from None
            raise KeyRingError(reason) from None
        except botocore.exceptions.NoCredentialsError:
            raise KeyRingError(
                f"{self._where()}: no AWS credentials (set them the standard AWS way: "
                "environment, profile or role)"
            ) from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            # botocore's parser fails this way on a body that is not the answer's shape
            # (a JSON list, a number where base64 belongs): KMS, or a proxy on the way, is
            # failing, which may pass.
            raise SignerUnavailable(
                f"{self._where()} gave a malformed answer when asked to {what}: "
                f"{type(exc).__name__}",
                retry_after=RETRY_AFTER,
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            reason = f"{self._where()} could not {what}: {type(exc).__name__}"
            # KMS could not be reached (refused, timed out, cut off): every call would hold
            # a worker for up to the timeouts, so signing fails fast for RETRY_AFTER seconds.
            self._down_reason = reason
            self._down_until = self.monotonic() + RETRY_AFTER
            raise SignerUnavailable(reason, retry_after=RETRY_AFTER) from None

    def _field(self, what: str, answer: Any, name: str, kind: type[T]) -> T:
        """``answer[name]`` when it is a non-empty ``kind``; else :class:`SignerUnavailable`
        (a KMS, or a proxy on the way, that answers 200 without it is failing)."""
        value = answer.get(name) if isinstance(answer, dict) else None
        if not isinstance(value, kind) or not value:
            raise SignerUnavailable(
                f"{self._where()} gave a malformed answer when asked to {what}: no {name}",
                retry_after=RETRY_AFTER,
            )
        return value

    # -- the KeyBackend protocol ----------------------------------------------------------

    def create_key(self, bits: int) -> tuple[str, rsa.RSAPublicKey]:
        answer = self._call(
            "create a key",
            lambda kms: kms.create_key(
                KeySpec=f"RSA_{bits}",
                KeyUsage="SIGN_VERIFY",
                Description="jwtmcp token signing key (RS256)",
                Tags=[{"TagKey": "jwtmcp", "TagValue": "ring-key"}],
            ),
        )
        metadata = self._field("create a key", answer, "KeyMetadata", dict)
        handle = self._field("create a key", metadata, "KeyId", str)
        return handle, self.public_key(handle)

    def public_key(self, handle: str) -> rsa.RSAPublicKey:
        answer = self._call("read a public key", lambda kms: kms.get_public_key(KeyId=handle))
        algorithms = self._field("read a public key", answer, "SigningAlgorithms", list)
        der = self._field("read a public key", answer, "PublicKey", bytes)
        if SIGNING_ALGORITHM not in algorithms:
            raise KeyRingError(f"KMS key {handle} cannot sign {SIGNING_ALGORITHM}")
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, TypeError):
            raise KeyRingError(f"KMS key {handle} gave an unreadable public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyRingError(f"KMS key {handle} is not an RSA key")
        return key

    def signer(self, handle: str) -> KmsSigner:
        if not isinstance(handle, str) or not handle:
            raise KeyRingError("a KMS key handle must be a non-empty KeyId")
        return KmsSigner(self, handle)

    def destroy_key(self, handle: str) -> None:
        self._call(
            "schedule a key's deletion",
            lambda kms: kms.schedule_key_deletion(
                KeyId=handle, PendingWindowInDays=DELETION_WINDOW_DAYS
            ),
        )

    def sign(self, handle: str, data: bytes) -> bytes:
        """The RSASSA-PKCS1-v1_5 SHA-256 signature of ``data`` by KMS key ``handle``.

        Within :data:`RETRY_AFTER` seconds of KMS not being reached, raises
        :class:`SignerUnavailable` at once instead of calling it again. An answer without
        a signature (or not KMS's shape) is :class:`SignerUnavailable` too; the signature's
        length and validity are checked by :meth:`HandleSigner.sign`."""
        wait = self._down_until - self.monotonic()
        if wait > 0:
            raise SignerUnavailable(self._down_reason, retry_after=max(1, math.ceil(wait)))
        if len(data) <= MAX_RAW_MESSAGE:
            message, message_type = data, "RAW"
        else:
            message, message_type = hashlib.sha256(data).digest(), "DIGEST"
        answer = self._call(
            "sign",
            lambda kms: kms.sign(
                KeyId=handle,
                Message=message,
                MessageType=message_type,
                SigningAlgorithm=SIGNING_ALGORITHM,
            ),
        )
        return self._field("sign", answer, "Signature", bytes)


class KmsSigner(HandleSigner):
    """A :class:`~jwtmcp.signers.Signer` for one AWS KMS key."""

    __slots__ = ()

    def __init__(self, backend: KmsBackend, handle: str) -> None:
        super().__init__(backend, handle, retry_after=RETRY_AFTER)
