"""Signed QR pass codes: round trip, every kind of tampering, rendering, and a fuzz loop."""
from __future__ import annotations

import base64
import json
import pickle
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.access import qr
from services.access.qr import InvalidCode, new_signing_key, render_png, render_svg, sign, verify

CLAIMS = {"id": "vp-123", "site": "demo", "sub": "visitor:vp-123", "name": "Zoë Ång",
          "from": 1790000000, "until": 1790003600, "gates": ["north-gate"], "uses": 3}
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_sign(key_id: str, payload: bytes, private_raw: bytes) -> str:
    """A code signed like `sign` does, but with any payload and any key id (for forging tests)."""
    signed = f"GH1.{key_id}.{b64(payload)}"
    return f"{signed}.{b64(Ed25519PrivateKey.from_private_bytes(private_raw).sign(signed.encode()))}"


@pytest.fixture(scope="module")
def keys():
    demo = new_signing_key()
    other = new_signing_key()
    return {"demo": demo, "other": other}


@pytest.fixture(scope="module")
def public(keys):
    return {kid: pub for kid, _, pub in keys.values()}


@pytest.fixture(scope="module")
def code(keys):
    kid, private, _ = keys["demo"]
    return sign(CLAIMS, kid, private)


def reason(code, public_keys, site_id=None) -> str:
    with pytest.raises(InvalidCode) as exc:
        verify(code, public_keys, site_id)
    assert str(exc.value)
    return exc.value.reason


def test_new_signing_key_shape():
    import hashlib

    kid, private, pub = new_signing_key()
    assert len(private) == 32 and len(pub) == 32 and isinstance(private, bytes)
    assert kid == hashlib.sha256(pub).hexdigest()[:8]
    assert new_signing_key()[1] != private


def test_round_trip(code, keys, public):
    assert code.startswith(f"GH1.{keys['demo'][0]}.")
    assert "=" not in code and len(code.split(".")) == 4
    payload = unb64(code.split(".")[2])
    assert payload == json.dumps(CLAIMS, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert verify(code, public) == CLAIMS
    assert verify(code, public, site_id="demo") == CLAIMS
    assert verify(code, {keys["demo"][0]: keys["demo"][2]}) == CLAIMS
    assert len(code) < 400, "a typical pass must fit a small QR code"


def test_sign_is_deterministic_and_checks_its_inputs(keys):
    kid, private, _ = keys["demo"]
    assert sign(CLAIMS, kid, private) == sign(dict(reversed(list(CLAIMS.items()))), kid, private)
    with pytest.raises(ValueError):
        sign(CLAIMS, keys["other"][0], private)            # key id of another key
    with pytest.raises(ValueError):
        sign(CLAIMS, kid, private[:31])
    for bad in ({"x": 1.5}, {"x": None}, {"x": True}, {"x": [1]}, {"x": {"y": 1}}, {1: "a"}, ["a"]):
        with pytest.raises(TypeError):
            sign(bad, kid, private)
    with pytest.raises(ValueError, match="too large"):
        sign({"name": "x" * 1000}, kid, private)


def test_altered_payload_bytes(code, public):
    head, kid, payload, sig = code.split(".")
    raw = bytearray(unb64(payload))
    for i in range(len(raw)):
        changed = bytearray(raw)
        changed[i] ^= 0x01
        assert reason(f"{head}.{kid}.{b64(bytes(changed))}.{sig}", public) == "bad_signature"
    # Same claims, re-encoded differently (spaces): still not the signed text.
    spaced = json.dumps(CLAIMS, sort_keys=True).encode()
    assert reason(f"{head}.{kid}.{b64(spaced)}.{sig}", public) == "bad_signature"


def test_altered_signature(code, public):
    head, kid, payload, sig = code.split(".")
    raw = bytearray(unb64(sig))
    for i in range(len(raw)):
        changed = bytearray(raw)
        changed[i] ^= 0x80
        assert reason(f"{head}.{kid}.{payload}.{b64(bytes(changed))}", public) == "bad_signature"


def test_malleable_signature_rejected(code, public):
    """S + L is the same scalar mod L; a strict verifier must still refuse it."""
    head, kid, payload, sig = code.split(".")
    raw = unb64(sig)
    s = int.from_bytes(raw[32:], "little") + ED25519_ORDER
    assert s < 2**256
    forged = raw[:32] + s.to_bytes(32, "little")
    assert reason(f"{head}.{kid}.{payload}.{b64(forged)}", public) == "bad_signature"


def test_non_canonical_base64_signature_rejected(code, public):
    """The last base64 character carries 4 unused bits: other spellings of the signature are refused."""
    head, kid, payload, sig = code.split(".")
    for ch in ALPHABET:
        if ch == sig[-1]:
            continue
        with pytest.raises(InvalidCode):
            verify(f"{head}.{kid}.{payload}.{sig[:-1]}{ch}", public)


def test_every_single_character_change_is_refused(code, public):
    for i in range(len(code)):
        for ch in ALPHABET + ".":
            if ch != code[i]:
                with pytest.raises(InvalidCode):
                    verify(code[:i] + ch + code[i + 1:], public)


def test_swapped_key_id(code, keys, public):
    head, _, payload, sig = code.split(".")
    assert reason(f"{head}.{keys['other'][0]}.{payload}.{sig}", public) == "bad_signature"


def test_key_from_another_keypair_or_site(keys, public):
    demo_kid = keys["demo"][0]
    other_kid, other_private, other_public = keys["other"]
    payload = json.dumps(CLAIMS, sort_keys=True, separators=(",", ":")).encode()
    # Signed by another key but claiming the demo key id.
    assert reason(raw_sign(demo_kid, payload, other_private), public) == "bad_signature"
    # Signed by another site's key that this gate does not hold.
    theirs = sign({**CLAIMS, "site": "elsewhere"}, other_kid, other_private)
    assert reason(theirs, {demo_kid: keys["demo"][2]}) == "unknown_key"
    assert reason(theirs, {}) == "unknown_key"
    # The right key id mapped to the wrong public key.
    assert reason(sign(CLAIMS, demo_kid, keys["demo"][1]), {demo_kid: other_public}) == "bad_signature"


def test_wrong_site(code, public):
    assert reason(code, public, site_id="elsewhere") == "wrong_site"
    assert verify(code, public, site_id=None)["site"] == "demo"


def test_wrong_site_when_site_missing(keys, public):
    kid, private, _ = keys["demo"]
    claims = {k: v for k, v in CLAIMS.items() if k != "site"}
    assert reason(sign(claims, kid, private), public, site_id="demo") == "wrong_site"


def test_truncated(code, public):
    for n in range(len(code)):
        assert reason(code[:n], public) == "malformed", n


@pytest.mark.parametrize("garbage", [
    "", "GH1", "GH1...", "GH1.a.b.c", "GH2.abcdef01.e30." + "A" * 86, "gh1.abcdef01.e30." + "A" * 86,
    "GH1.ABCDEF01.e30." + "A" * 86, "GH1.abcdef0.e30." + "A" * 86, "GH1.abcdef01..." + "A" * 86,
    "GH1.abcdef01.e30." + "A" * 85, "GH1.abcdef01.e30." + "A" * 87, "GH1.abcdef01.e3=." + "A" * 86,
    "GH1.abcdef01.e+0." + "A" * 86, "GH1.abcdef01.e30." + "A" * 85 + "=", "GH1.abcdef01.e30." + "A" * 86 + ".",
    "GH1.abcdef01.e30." + "A" * 86 + "\n", " GH1.abcdef01.e30." + "A" * 86, "GH1.abcdef01.e30.A." + "A" * 86,
    "GH1.abcdef01.A." + "A" * 86, "GH1.abcdef01.é30." + "A" * 86, "GH1.abcdef01.\ud800." + "A" * 86,
    "\x00" * 50, "GH1." + "." * 2000, "x" * 1025, "https://example.com/?q=GH1",
])
def test_garbage_is_malformed(garbage, public):
    assert reason(garbage, public) == "malformed"


def test_oversized(code, public):
    assert reason(code + "A" * (1025 - len(code)), public) == "malformed"


@pytest.mark.parametrize("value", [None, 123, 1.5, b"GH1.abc", ["GH1"], {"code": 1}, object()])
def test_non_str_is_malformed(value, public):
    assert reason(value, public) == "malformed"


def test_code_bytes_is_malformed(code, public):
    assert reason(code.encode(), public) == "malformed"


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b'"a string"', b"[1,2]", b"42", b"null",
                                     b"[" * 600 + b"]" * 600])
def test_signed_payload_that_is_not_claims_is_malformed(payload, keys, public):
    kid, private, _ = keys["demo"]
    assert reason(raw_sign(kid, payload, private), public) == "malformed"


def test_unsigned_non_json_reports_bad_signature(keys, public):
    kid, _, _ = keys["demo"]
    assert reason(f"GH1.{kid}.{b64(b'not json')}.{'A' * 86}", public) == "bad_signature"


def test_bad_public_key_config_is_unknown_key(code, keys):
    kid = keys["demo"][0]
    for bad in (b"short", "a string", 32, b"\x00" * 33):
        assert reason(code, {kid: bad}) == "unknown_key"
    assert reason(code, None) == "unknown_key"


def test_invalid_code_is_a_value_error_and_pickles():
    err = InvalidCode("wrong_site", "code is for another site")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert copy.reason == "wrong_site" and str(copy) == "code is for another site"


def test_verify_caches_loaded_keys(code, public):
    verify(code, public)
    before = qr._public_key.cache_info()
    for _ in range(300):
        verify(code, public, site_id="demo")
    after = qr._public_key.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 300


def test_render_svg(code):
    svg = render_svg(code)
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")


def test_render_png(code):
    png = render_png(code)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(render_png(code, scale=2)) < len(png)
    with pytest.raises(ValueError):
        render_png(code, scale=0)


def test_fuzz_only_invalid_code(code, keys, public):
    rng = random.Random(20240611)
    kid = keys["demo"][0]
    charsets = [ALPHABET + ".", ALPHABET + ".=+/ \n", "".join(map(chr, range(32, 127))),
                "".join(map(chr, range(0, 0x250))) + "\ud800\udfff\u2028\U0001f600"]
    for i in range(2000):
        kind = i % 4
        if kind == 0:           # random text
            chars = rng.choice(charsets)
            candidate = "".join(rng.choice(chars) for _ in range(rng.randint(0, 300)))
        elif kind == 1:         # random parts in the right shape
            parts = ["GH1", kid if rng.random() < 0.7 else "".join(rng.choices("0123456789abcdef", k=8)),
                     "".join(rng.choices(ALPHABET, k=rng.randint(0, 200))),
                     "".join(rng.choices(ALPHABET, k=rng.choice([85, 86, 86, 87])))]
            candidate = ".".join(parts)
        else:                   # a genuine code with a few random edits
            chars = list(code)
            for _ in range(rng.randint(1, 4)):
                op, pos = rng.randrange(3), rng.randrange(len(chars) + 1)
                if op == 0:
                    chars.insert(pos, rng.choice(rng.choice(charsets)))
                elif chars and op == 1:
                    del chars[min(pos, len(chars) - 1)]
                elif chars:
                    chars[min(pos, len(chars) - 1)] = rng.choice(rng.choice(charsets))
            candidate = "".join(chars)
        try:
            claims = verify(candidate, public, site_id=rng.choice([None, "demo"]))
        except InvalidCode as exc:
            assert exc.reason in qr.REASONS
        else:
            assert candidate == code and claims == CLAIMS, candidate
