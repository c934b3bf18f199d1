"""Signed QR pass codes: issued centrally, checked at the edge offline with public keys only.

A code is ``GH1.<key_id>.<payload>.<signature>``:

- ``key_id``: the first 8 hex digits of sha256(raw Ed25519 public key), naming the key that signed;
- ``payload``: base64url (no padding) of the claims as canonical JSON (sorted keys, no spaces, UTF-8);
- ``signature``: base64url (no padding) of the Ed25519 signature over the ASCII bytes
  ``"GH1." + key_id + "." + payload``, so neither the key id nor the payload can be swapped.

``verify`` checks the form, the key, the signature and (optionally) the site, and returns the claims.
It does NOT check time: the claims' "from"/"until" (and "gates", "uses") are checked by the caller's
rules against a trusted clock and the synced state. The claims JSON is parsed only once the signature
holds, so an unsigned payload that is not JSON is reported as "bad_signature", not "malformed".

No I/O here except the randomness used to make a key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
from collections.abc import Mapping
from functools import lru_cache

import segno
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "GH1"
MAX_CODE_LENGTH = 1024
REASONS = ("malformed", "unknown_key", "bad_signature", "wrong_site")

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


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict unpadded base64url: only the URL alphabet, and only the canonical spelling of the bytes."""
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:        # unused low bits set: another spelling of the same bytes
        raise ValueError("not canonical base64url")
    return data


def _key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:8]


def _public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def new_signing_key() -> tuple[str, bytes, bytes]:
    """A fresh Ed25519 key: (key_id, private key raw 32 bytes, public key raw 32 bytes)."""
    private = Ed25519PrivateKey.generate()
    private_raw = private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public_raw = _public_raw(private)
    return _key_id(public_raw), private_raw, public_raw


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


def sign(claims: dict, key_id: str, private_key: bytes) -> str:
    """The code for `claims`, signed with the raw Ed25519 private key whose public key is `key_id`.

    Raises TypeError for claims that are not str/int/list[str] values, ValueError for a key that does
    not match `key_id` or claims too large for a code (over MAX_CODE_LENGTH characters).
    """
    _check_claims(claims)
    if not isinstance(private_key, bytes | bytearray | memoryview) or len(private_key) != 32:
        raise ValueError("private_key must be 32 raw bytes")
    private = Ed25519PrivateKey.from_private_bytes(bytes(private_key))
    if not isinstance(key_id, str) or _key_id(_public_raw(private)) != key_id:
        raise ValueError(f"key_id {key_id!r} is not the id of this private key")
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signed = f"{PREFIX}.{key_id}.{_b64encode(payload)}"
    code = f"{signed}.{_b64encode(private.sign(signed.encode('ascii')))}"
    if len(code) > MAX_CODE_LENGTH:
        raise ValueError(f"claims too large: the code would be {len(code)} characters, at most {MAX_CODE_LENGTH}")
    return code


@lru_cache(maxsize=256)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(code: str, public_keys: dict[str, bytes], site_id: str | None = None) -> dict:
    """The claims of a genuine code; raises InvalidCode (and nothing else) for anything else.

    `public_keys` maps key id to raw public key; `site_id`, when given, must equal claims["site"].
    Time windows are not checked here (see the module docstring).
    """
    if not isinstance(code, str):
        raise InvalidCode("malformed", f"a code is text, not {type(code).__name__}")
    if len(code) > MAX_CODE_LENGTH:
        raise InvalidCode("malformed", f"code too long ({len(code)} characters, at most {MAX_CODE_LENGTH})")
    parts = code.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise InvalidCode("malformed", "not a Gatehouse pass code")
    _, key_id, payload_b64, signature_b64 = parts
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidCode("malformed", "bad key id in code")
    if len(signature_b64) != _SIGNATURE_CHARS:
        raise InvalidCode("malformed", "bad signature length in code")
    try:
        payload = _b64decode(payload_b64)
        signature = _b64decode(signature_b64)
    except (ValueError, binascii.Error):
        raise InvalidCode("malformed", "bad base64 in code") from None

    raw = public_keys.get(key_id) if isinstance(public_keys, Mapping) else None
    if raw is None:
        raise InvalidCode("unknown_key", f"code signed by unknown key {key_id}")
    try:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise TypeError("not bytes")
        public = _public_key(bytes(raw))
    except (TypeError, ValueError):
        raise InvalidCode("unknown_key", f"key {key_id} is not a valid Ed25519 public key") from None
    try:
        public.verify(signature, f"{PREFIX}.{key_id}.{payload_b64}".encode("ascii"))
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


def _qr(code: str) -> segno.QRCode:
    return segno.make(code, error="m", micro=False, boost_error=False)


def render_svg(code: str) -> str:
    """The code as a standalone SVG document (no XML declaration), error correction M."""
    out = io.BytesIO()
    _qr(code).save(out, kind="svg", xmldecl=False, scale=4, border=4)
    return out.getvalue().decode("utf-8")


def render_png(code: str, scale: int = 6) -> bytes:
    """The code as PNG bytes, `scale` pixels per module, error correction M."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 64:
        raise ValueError("scale must be a whole number from 1 to 64")
    out = io.BytesIO()
    _qr(code).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()
