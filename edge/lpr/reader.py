"""Reader: frame -> plate candidates -> rectified crops -> recogniser -> plate grammar -> reads."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge.lpr.finder import Candidate, Finder, _iou, rectify
from edge.lpr.frames import FrameError, decode
from edge.lpr.recognizer import HEIGHT, Recognizer
from edge.lpr.text import Decoded, Decoder

COLOURS = ("blue", "yellow", "white", "black", "green", "other")
# a read below this confidence is not reported from a whole frame (it is mostly not a plate)
MIN_CONFIDENCE = 0.1
# a plate's crop is read at this many times its own aspect (8 narrow characters need room)
WIDTH_FACTOR = 1.5
# a read this confident ends the search, except for candidates scored at least CONTINUE_RATIO
# times the one it came from
CONFIDENT = 0.8
CONTINUE_RATIO = 0.97
# ... or scored at least this (a row of 5-9 character blobs on a plate-coloured blob: another car)
STRONG = 4.8


@dataclass
class PlateRead:
    text: str
    colour: str                         # blue | yellow | white | black | green | other
    confidence: float                   # 0..1: the lowest probability of any of its characters
    box: tuple[int, int, int, int]      # x, y, w, h in the frame
    ms: float                           # time the whole frame (or crop) took to read, ms
    kind: str = ""                      # standard | new_energy | suffixed | plain
    quad: tuple[tuple[float, float], ...] = ()   # the plate's corners in the frame, as found


def plate_colour(crop: np.ndarray, decoded: Decoded | None = None) -> str:
    """The plate's background colour from a rectified crop (BGR); the grammar settles the
    kinds whose colour the law fixes (new-energy plates are green, police white, coach yellow,
    Hong Kong and Macau black)."""
    if decoded is not None and decoded.text:
        if decoded.kind == "new_energy":
            return "green"
        last = decoded.text[-1]
        if decoded.kind == "suffixed":
            if last == "警":
                return "white"
            if last == "学":
                return "yellow"
            if last in "港澳":
                return "black"
    h, w = crop.shape[:2]
    inner = crop[h // 8: h - h // 8, w // 20: w - w // 20]
    hsv = cv2.cvtColor(inner, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int16)
    H, S, V = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    chromatic = (S > 70) & (V > 45)
    fractions = {
        "blue": float((chromatic & (H >= 95) & (H <= 130)).mean()),
        "yellow": float((chromatic & (H >= 12) & (H <= 35)).mean()),
        "green": float(((S > 45) & (V > 50) & (H > 35) & (H < 90)).mean()),
    }
    best = max(fractions, key=fractions.get)
    if fractions[best] >= 0.3:
        return best
    if float(chromatic.mean()) >= 0.35:
        return "other"
    # white or black: which is the background, the lighter or the darker side of the strokes?
    gray = cv2.cvtColor(inner, cv2.COLOR_BGR2GRAY)
    thr, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    light = float((binary > 0).mean())
    return "white" if light >= 0.5 else "black"


class Reader:
    """Loads the recognition model once (lazily, on first use) and reads frames and crops.
    Safe to share between threads."""

    def __init__(self, threads: int = 1, max_candidates: int = 6, min_confidence: float = MIN_CONFIDENCE):
        self.threads = threads
        self.finder = Finder(max_candidates=max_candidates)
        self.min_confidence = min_confidence
        self._rec: Recognizer | None = None
        self._decoder: Decoder | None = None
        self._lock = threading.Lock()

    def _model(self) -> tuple[Recognizer, Decoder]:
        if self._rec is None:
            with self._lock:
                if self._rec is None:
                    rec = Recognizer(self.threads)
                    self._decoder = Decoder(rec.symbols)
                    self._rec = rec
        return self._rec, self._decoder

    def load(self) -> Reader:
        self._model()
        return self

    # -- crops ------------------------------------------------------------------------------------

    def read_crop(self, data) -> PlateRead:
        """A crop holding one plate (bytes or array), tight or with a little margin. Always a
        PlateRead: text "" and confidence 0 when nothing plate-like is read."""
        started = time.perf_counter()
        img = decode(data)
        rec, decoder = self._model()
        d = decoder.decode(rec.probs([img])[0])
        h, w = img.shape[:2]
        return PlateRead(d.text, plate_colour(img, d) if d.text else "other", round(d.confidence, 4),
                         (0, 0, w, h), (time.perf_counter() - started) * 1000, d.kind,
                         ((0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))))

    # -- frames -----------------------------------------------------------------------------------

    def read_frame(self, data) -> list[PlateRead]:
        """Every plate read in the frame, most confident first; [] when there is none."""
        started = time.perf_counter()
        frame = decode(data)
        rec, decoder = self._model()
        cands = self.finder.find(frame)
        reads: list[tuple[PlateRead, Candidate]] = []
        # Read the most plate-like candidate first; read the next ones only while nothing has
        # been read with confidence, or while they look as plate-like as one that was (a second
        # car). A frame with one clear plate costs one pass of the recogniser.
        confident_score = None
        for c in cands:
            if confident_score is not None and c.score < min(CONTINUE_RATIO * confident_score, STRONG):
                break
            qw = float(np.linalg.norm(c.quad[1] - c.quad[0]))
            qh = float(np.linalg.norm(c.quad[3] - c.quad[0]))
            rw = int(np.clip(round(HEIGHT * qw / max(qh, 1.0) * WIDTH_FACTOR / 8) * 8, 136, 256))
            crop = rectify(frame, c.quad, rw, HEIGHT)
            d = decoder.decode(rec.probs([crop])[0])
            if not d.text or d.confidence < self.min_confidence:
                continue
            reads.append((PlateRead(d.text, plate_colour(crop, d), round(d.confidence, 4), c.box, 0.0,
                                    d.kind, tuple(map(tuple, c.quad.round(1).tolist()))), c))
            if d.confidence >= CONFIDENT and confident_score is None:
                confident_score = c.score
        # mainland plates (the grammar matched) before plain ones, then by confidence
        reads.sort(key=lambda rc: (rc[0].kind == "plain", -rc[0].confidence))
        kept: list[PlateRead] = []
        for r, _ in reads:
            if any(r.text == k.text or _iou(r.box, k.box) > 0.2 for k in kept):
                continue
            kept.append(r)
        ms = (time.perf_counter() - started) * 1000
        for r in kept:
            r.ms = ms
        return kept


_default: Reader | None = None
_default_lock = threading.Lock()


def default_reader() -> Reader:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Reader()
    return _default


__all__ = ["COLOURS", "FrameError", "PlateRead", "Reader", "default_reader", "plate_colour"]
