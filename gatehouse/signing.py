"""Ed25519-signed codes, generic over their prefix: ``<PREFIX>.<key_id>.<payload>.<signature>``.

The same format as access's GH1 pass codes (services/access/qr.py documents it); patrol signs
its checkpoint QR codes with it under the prefix "GP1" and keys of its own, so a checkpoint
code can never pass as a gate pass and the reverse. The prefix is part of the signed text.

- ``key_id``: the first 8 hex digits of sha256(raw Ed25519 public key);
- ``payload``: base64url (no padding) of the claims as canonical JSON;
- ``signature``: base64url (no padding) of the Ed25519 signature over ``prefix.key_id.payload``.

``verify`` raises InvalidCode with a reason from REASONS and nothing else. No I/O here except
the randomness used to make a key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_CODE_LENGTH = 1024
REASONS = ("malformed", "unknown_key", "bad_signature", "wrong_site")

_PREFIX = re.compile(r"[A-Z][A-Z0-9]{1,7}")
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE_CHARS = 86          # 64 bytes in unpadded base64url
_RAW = serialization.Encoding.Raw


class InvalidCode(ValueError):
    """The code is not one this site can trust; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.reason, str(self))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict unpadded base64url: only the URL alphabet, and only the canonical spelling."""
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:8]


def _public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def new_signing_key() -> tuple[str, bytes, bytes]:
    """A fresh Ed25519 key: (key_id, private key raw 32 bytes, public key raw 32 bytes)."""
    private = Ed25519PrivateKey.generate()
    private_raw = private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public_raw = _public_raw(private)
    return key_id(public_raw), private_raw, public_raw


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix must be 2-8 upper-case letters or digits, got {prefix!r}")


def _check_claims(claims) -> None:
    if not isinstance(claims, dict):
        raise TypeError("claims must be a dict")
    for name, value in claims.items():
        if not isinstance(name, str):
            raise TypeError(f"claim names must be text, not {name!r}")
        ok = (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
              or (isinstance(value, list) and all(isinstance(v, str) for v in value)))
        if not ok:
            raise TypeError(f"claim {name!r} must be text, a whole number or a list of text, not {value!r}")


def sign(prefix: str, claims: dict, key: str, private_key: bytes) -> str:
    """The code for `claims`, signed with the raw Ed25519 private key whose public key id is `key`."""
    _check_prefix(prefix)
    _check_claims(claims)
    if not isinstance(private_key, bytes | bytearray | memoryview) or len(private_key) != 32:
        raise ValueError("private_key must be 32 raw bytes")
    private = Ed25519PrivateKey.from_private_bytes(bytes(private_key))
    if not isinstance(key, str) or key_id(_public_raw(private)) != key:
        raise ValueError(f"key_id {key!r} is not the id of this private key")
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signed = f"{prefix}.{key}.{b64encode(payload)}"
    code = f"{signed}.{b64encode(private.sign(signed.encode('ascii')))}"
    if len(code) > MAX_CODE_LENGTH:
        raise ValueError(f"claims too large: the code would be {len(code)} characters, at most {MAX_CODE_LENGTH}")
    return code


@lru_cache(maxsize=256)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(prefix: str, code: str, public_keys: Mapping[str, bytes], site_id: str | None = None) -> dict:
    """The claims of a genuine code; raises InvalidCode (and nothing else) for anything else."""
    _check_prefix(prefix)
    if not isinstance(code, str):
        raise InvalidCode("malformed", f"a code is text, not {type(code).__name__}")
    if len(code) > MAX_CODE_LENGTH:
        raise InvalidCode("malformed", f"code too long ({len(code)} characters, at most {MAX_CODE_LENGTH})")
    parts = code.split(".")
    if len(parts) != 4 or parts[0] != prefix:
        raise InvalidCode("malformed", f"not a {prefix} code")
    _, kid, payload_b64, signature_b64 = parts
    if not _KEY_ID.fullmatch(kid):
        raise InvalidCode("malformed", "bad key id in code")
    if len(signature_b64) != _SIGNATURE_CHARS:
        raise InvalidCode("malformed", "bad signature length in code")
    try:
        payload = b64decode(payload_b64)
        signature = b64decode(signature_b64)
    except (ValueError, binascii.Error):
        raise InvalidCode("malformed", "bad base64 in code") from None
    raw = public_keys.get(kid) if isinstance(public_keys, Mapping) else None
    if raw is None:
        raise InvalidCode("unknown_key", f"code signed by unknown key {kid}")
    try:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise TypeError("not bytes")
        public = _public_key(bytes(raw))
    except (TypeError, ValueError):
        raise InvalidCode("unknown_key", f"key {kid} is not a valid Ed25519 public key") from None
    try:
        public.verify(signature, f"{prefix}.{kid}.{payload_b64}".encode("ascii"))
    except InvalidSignature:
        raise InvalidCode("bad_signature", "code signature does not match (altered or forged code)") from None
    try:
        claims = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        raise InvalidCode("malformed", "code payload is not JSON") from None
    if not isinstance(claims, dict):
        raise InvalidCode("malformed", "code payload is not a set of claims")
    if site_id is not None and claims.get("site") != site_id:
        raise InvalidCode("wrong_site", f"code is for site {claims.get('site')!r}, not {site_id!r}")
    return claims
