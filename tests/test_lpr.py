"""edge/lpr: the real recognition model (PP-OCRv4 from the rapidocr-onnxruntime wheel), no mocks.

Real crops from /work/shared/data/plates/lprnet-test (skipped where that folder is absent),
rendered scenes of every plate kind (edge/lpr/render.py, seeded), and frames that must be
refused with FrameError rather than crash.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.lpr import COLOURS, FrameError, PlateRead, Reader, read_crop, read_frame
from edge.lpr.render import KINDS, render_plate, render_scene
from edge.lpr.text import Decoder

CROPS = Path(os.environ.get("LPR_CROPS", "/work/shared/data/plates/lprnet-test"))
REAL = ["京PL3N67", "川JK0707", "川X90621", "沪AMS087", "沪C21F13", "浙D911SY", "湘E269JY", "皖A00E66",
        "皖A06S56", "浙J2K181"]


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader().load()


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


# -- real crops -----------------------------------------------------------------------------------------

@pytest.mark.skipif(not CROPS.is_dir(), reason=f"{CROPS} not here")
def test_real_crops_read_exactly(reader):
    for text in REAL:
        read = reader.read_crop((CROPS / f"{text}.jpg").read_bytes())
        assert read.text == text, (text, read)
        assert read.colour == "blue"
        assert 0.5 <= read.confidence <= 1.0
        assert read.box == (0, 0, 94, 24)


@pytest.mark.skipif(not CROPS.is_dir(), reason=f"{CROPS} not here")
def test_module_functions_share_one_reader():
    data = (CROPS / f"{REAL[0]}.jpg").read_bytes()
    assert read_crop(data).text == REAL[0]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert read_crop(img).text == REAL[0]       # an array works as bytes do
    from edge.lpr import default_reader
    assert default_reader() is default_reader()
    scene = render_scene(200000, "blue")
    assert read_frame(scene.image)[0].text == scene.plates[0].text


def test_reader_loads_lazily_and_once():
    r = Reader()
    assert r._rec is None
    r.read_crop(render_plate("皖A12345", "blue")[0])
    model = r._rec
    assert model is not None
    r.read_crop(render_plate("苏E0L9F3", "blue")[0])
    assert r._rec is model


# -- rendered plates and scenes: every kind ----------------------------------------------------------------

@pytest.mark.parametrize("text,kind", [
    ("皖A12345", "blue"), ("鲁B7K39S", "yellow"), ("京A1234警", "white"), ("粤Z1A23港", "black"),
    ("沪AD12345", "green"), ("AB12CDE", "plain"),
])
def test_rendered_crops_of_every_kind(reader, text, kind):
    plate, colour = render_plate(text, kind, np.random.default_rng(1))
    read = reader.read_crop(_jpeg(plate))
    assert (read.text, read.colour) == (text, colour), read


@pytest.mark.parametrize("kind", KINDS)
def test_scenes_of_every_kind(reader, kind):
    """Whole 1280x720 frames, from bytes as a camera hands them over: the plate is the first read,
    with its colour, a confidence, its box where the plate is."""
    for seed in (200000, 200002):
        scene = render_scene(seed, kind)
        truth = scene.plates[0]
        reads = reader.read_frame(_jpeg(scene.image))
        assert reads, (kind, seed, truth.text)
        best = reads[0]
        assert isinstance(best, PlateRead)
        assert best.text == truth.text, (kind, seed, truth.text, reads)
        assert best.colour == truth.colour and best.colour in COLOURS
        assert 0.0 < best.confidence <= 1.0 and best.ms > 0
        x, y, w, h = best.box
        tx, ty, tw, th = truth.box
        assert tx - 10 <= x + w / 2 <= tx + tw + 10 and ty - 10 <= y + h / 2 <= ty + th + 10


def test_reads_are_ordered_best_first(reader):
    scene = render_scene(31, "blue", plates=2)
    reads = reader.read_frame(scene.image)
    assert {r.text for r in reads} >= {p.text for p in scene.plates}, (scene.plates, reads)
    assert [r.confidence for r in reads] == sorted((r.confidence for r in reads), reverse=True)


def test_frames_without_a_plate_give_no_read(reader):
    for seed in (300000, 300001, 300002):
        assert reader.read_frame(_jpeg(render_scene(seed, plates=0).image)) == []
    assert reader.read_frame(np.full((720, 1280, 3), 128, np.uint8)) == []
    assert reader.read_frame(np.zeros((720, 1280), np.uint8)) == []     # gray frames are fine


def test_render_is_deterministic():
    a, b = render_scene(5, "green"), render_scene(5, "green")
    assert a.plates[0].text == b.plates[0].text and np.array_equal(a.image, b.image)
    assert a.image.shape == (720, 1280, 3)


# -- frames that cannot be read ---------------------------------------------------------------------------

def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_unreadable_frames_raise_frame_error(reader):
    scene = render_scene(1, "blue")
    jpeg = _jpeg(scene.image)
    cases = {
        "empty": b"",
        "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "huge png header": _png_header(60000, 60000) + b"\x00" * 64,
        "huge jpeg header": jpeg[:2] + b"\xff\xc0\x00\x11\x08\xea\x60\xea\x60\x03" + b"\x00" * 200,
        "pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "text": "not bytes at all",
        "jpeg magic, garbage after": b"\xff\xd8\xff\xe0" + b"\x00" * 100,
        "too many bytes": b"\xff\xd8\xff" + b"\x00" * (20 * 1024 * 1024 + 1),
        "array too large": np.zeros((5000, 100, 3), np.uint8),
        "array of floats": np.zeros((720, 1280, 3), np.float32),
        "array of odd shape": np.zeros((720, 1280, 2), np.uint8),
    }
    for name, data in cases.items():
        with pytest.raises(FrameError) as err:
            reader.read_frame(data)
        assert str(err.value), name
        with pytest.raises(ValueError):        # FrameError is a ValueError
            reader.read_crop(data)


def test_frame_error_messages_say_why(reader):
    with pytest.raises(FrameError, match="empty"):
        reader.read_frame(b"")
    with pytest.raises(FrameError, match="PDF"):
        reader.read_frame(b"%PDF-1.4 ...")
    with pytest.raises(FrameError, match="too large"):
        reader.read_frame(_png_header(5000, 5000))
    with pytest.raises(FrameError, match="truncated"):
        jpeg = _jpeg(render_scene(2).image)
        reader.read_frame(jpeg[:-5000])


def test_other_encodings_are_read(reader):
    scene = render_scene(200000, "blue")
    ok, png = cv2.imencode(".png", scene.image)
    assert reader.read_frame(png.tobytes())[0].text == scene.plates[0].text
    ok, bmp = cv2.imencode(".bmp", scene.image)
    assert reader.read_frame(bmp.tobytes())[0].text == scene.plates[0].text


# -- the plate grammar ---------------------------------------------------------------------------------------

def test_grammar_fixes_confusions_by_position(reader):
    """A fake model output: the serial's '0' and '1' seen as 'O' and 'I', the letter seen as '8'.
    The grammar reads 0, 1 and B (B being the likeliest letter there)."""
    symbols = reader._model()[0].symbols
    dec = Decoder(symbols)
    index = {s: i for i, s in enumerate(symbols)}
    seq = [("皖", 0.95), ("8", 0.6, "B", 0.35), ("O", 0.7, "0", 0.2), ("I", 0.8, "1", 0.15),
           ("2", 0.99), ("3", 0.99), ("4", 0.99)]
    probs = []
    for item in seq:
        for _ in range(2):
            row = np.full(len(symbols), 1e-6, np.float32)
            for ch, p in zip(item[::2], item[1::2], strict=True):
                row[index[ch]] = p
            probs.append(row)
        blank = np.full(len(symbols), 1e-6, np.float32)
        blank[0] = 0.99
        probs.append(blank)
    d = dec.decode(np.array(probs))
    assert d.text == "皖B01234", d
    assert d.kind == "standard"
    assert 0.3 <= d.confidence <= 1.0
