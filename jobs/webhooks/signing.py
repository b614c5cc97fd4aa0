"""Standard Webhooks signing: secrets, the signed content, the headers (pure functions).

The convention (https://www.standardwebhooks.com/): a secret is ``whsec_`` + base64 of the
key; the signature of one attempt is ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{ts}.{body}")),
over the exact body bytes sent. During a rotation every valid secret signs, and the
``webhook-signature`` header carries the signatures separated by spaces: a receiver holding
either secret verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets as random_source
from collections.abc import Iterable, Mapping

#: Prefix of every signing secret (the Standard Webhooks / Svix convention).
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
#: Random bytes per secret (the convention asks for 24 to 64).
SECRET_BYTES = 32
#: Smallest key accepted when an operator brings their own secret.
MIN_SECRET_BYTES = 24
#: Header carrying the attempt number (1 for the first delivery attempt).
ATTEMPT_HEADER = "webhook-attempt"

_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def generate_secret() -> str:
    """A new ``whsec_`` secret of :data:`SECRET_BYTES` random bytes."""
    key = random_source.token_bytes(SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; ``ValueError`` (never echoing it) if malformed."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a signing secret must start with {SECRET_PREFIX!r}")
    encoded = secret.removeprefix(SECRET_PREFIX)
    if not _BASE64.match(encoded):
        raise ValueError("a signing secret must be whsec_ followed by base64")
    key = base64.b64decode(encoded)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a signing secret must hold at least {MIN_SECRET_BYTES} random bytes")
    return key


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{message_id}.{timestamp}.{body}``."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    secrets: Iterable[str],
    *,
    message_id: str,
    timestamp: int,
    body: bytes,
    attempt: int,
) -> dict[str, str]:
    """The headers of one delivery attempt: id, timestamp, signatures, attempt, content type.

    ``secrets`` must hold at least one secret (an endpoint always has one).
    """
    signatures = [signature(secret, message_id, timestamp, body) for secret in secrets]
    if not signatures:
        raise ValueError("an endpoint needs at least one signing secret")
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        ATTEMPT_HEADER: str(attempt),
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: int, tolerance: int = 300
) -> bool:
    """True when one ``v1`` signature of ``headers`` matches ``secret`` (receiver side helper).

    For our own tests and for receivers written in Python without the ``standardwebhooks``
    package; timestamps further than ``tolerance`` seconds from ``now`` are refused.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, message_id, timestamp, body)
    return any(
        hmac.compare_digest(expected, candidate)
        for candidate in lowered.get("webhook-signature", "").split()
    )
