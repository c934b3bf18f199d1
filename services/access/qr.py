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

The format and its checks live in gatehouse/signing.py (patrol's checkpoint codes share them
under their own prefix); this module fixes the prefix and renders codes as QR images. No I/O
here except the randomness used to make a key.
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import segno

from gatehouse import signing
from gatehouse.signing import MAX_CODE_LENGTH, REASONS, InvalidCode, _public_key, new_signing_key

PREFIX = "GH1"

__all__ = ["MAX_CODE_LENGTH", "PREFIX", "REASONS", "InvalidCode", "_public_key", "new_signing_key", "render_png",
           "render_svg", "sign", "verify"]


def sign(claims: dict, key_id: str, private_key: bytes) -> str:
    """The code for `claims`, signed with the raw Ed25519 private key whose public key is `key_id`.

    Raises TypeError for claims that are not str/int/list[str] values, ValueError for a key that does
    not match `key_id` or claims too large for a code (over MAX_CODE_LENGTH characters).
    """
    return signing.sign(PREFIX, claims, key_id, private_key)


def verify(code: str, public_keys: Mapping[str, bytes], site_id: str | None = None) -> dict:
    """The claims of a genuine code; raises InvalidCode (and nothing else) for anything else.

    `public_keys` maps key id to raw public key; `site_id`, when given, must equal claims["site"].
    Time windows are not checked here (see the module docstring).
    """
    return signing.verify(PREFIX, code, public_keys, site_id)


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
