"""Reader: frame -> plate candidates -> rectified crops -> recogniser -> plate grammar -> reads."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge.lpr.detector import TextDetector
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
# the detector's second, closer look (a 1280-wide frame at half size)
SECOND_DETECTOR_WIDTH = 640
# candidates read from one source (proposals, detector) while nothing was read with confidence
MAX_READS = 4


def _second_looks(quad: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Second looks at an unsure read: the same quad read narrower and wider, and the quad
    grown by 8% of its width and 15% of its height."""
    c = quad.mean(axis=0)
    grown = ((quad - c) * np.array((1.08, 1.15), np.float32) + c).astype(np.float32)
    return [(quad, WIDTH_FACTOR * 0.8), (quad, WIDTH_FACTOR * 1.25), (grown, WIDTH_FACTOR)]


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

    def __init__(self, threads: int = 1, max_candidates: int = 6, min_confidence: float = MIN_CONFIDENCE,
                 use_detector: bool = True):
        self.threads = threads
        self.use_detector = use_detector
        self._detector: TextDetector | None = None
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
        if self.use_detector:
            self._text_detector()
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
        reads = self._read(frame, self.finder.find(frame))
        if self.use_detector and not any(r.confidence >= CONFIDENT and r.kind != "plain" for r in reads):
            # no mainland plate read with confidence from the cheap proposals (a sign's text can
            # read as a plain plate): ask the text detector
            reads += self._read(frame, self.finder.refined(frame, self._text_detector().proposals(frame)))
            if not any(r.confidence >= CONFIDENT and r.kind != "plain" for r in reads):
                # still nothing: a closer look, with the frame's local contrast evened out (night, glare)
                reads += self._read(frame, self.finder.refined(frame, self._text_detector().proposals(
                    frame, SECOND_DETECTOR_WIDTH, enhance=True)))
        # mainland plates (the grammar matched) before plain ones, then by confidence
        reads.sort(key=lambda r: (r.kind == "plain", -r.confidence))
        if reads and reads[0].kind != "plain" and reads[0].confidence < CONFIDENT:
            # unsure: read the best plate again a little narrower and wider, and with more margin;
            # the surest read counts (the province character is the usual doubt)
            best = reads[0]
            quad0 = np.array(best.quad, np.float32)
            for quad, factor in _second_looks(quad0):
                crop, d = self._read_one(frame, quad, factor)
                if d.text and d.kind != "plain" and d.confidence > reads[0].confidence:
                    reads[0] = self._plate_read(crop, d, quad0)
        kept: list[PlateRead] = []
        for r in reads:
            if any(r.text == k.text or _iou(r.box, k.box) > 0.2 for k in kept):
                continue
            kept.append(r)
        ms = (time.perf_counter() - started) * 1000
        for r in kept:
            r.ms = ms
        return kept

    def _read(self, frame: np.ndarray, cands: list[Candidate]) -> list[PlateRead]:
        """Read the most plate-like candidate first; read the next ones only while nothing has
        been read with confidence, or while they look as plate-like as one that was (a second
        car). A frame with one clear plate costs one pass of the recogniser."""
        rec, decoder = self._model()
        reads: list[PlateRead] = []
        confident_score = None
        n_read = 0
        for c in cands:
            if confident_score is not None and c.score < min(CONTINUE_RATIO * confident_score, STRONG):
                break
            if n_read >= MAX_READS and confident_score is None:
                break
            n_read += 1
            crop, d = self._read_one(frame, c.quad, WIDTH_FACTOR)
            if not d.text or d.confidence < self.min_confidence:
                continue
            reads.append(self._plate_read(crop, d, c.quad))
            if d.confidence >= CONFIDENT and confident_score is None:
                confident_score = c.score
        return reads

    @staticmethod
    def _plate_read(crop: np.ndarray, d: Decoded, quad: np.ndarray) -> PlateRead:
        x0, y0 = quad.min(axis=0)
        x1, y1 = quad.max(axis=0)
        return PlateRead(d.text, plate_colour(crop, d), round(d.confidence, 4),
                         (int(x0), int(y0), int(round(x1 - x0)), int(round(y1 - y0))), 0.0, d.kind,
                         tuple(map(tuple, quad.round(1).tolist())))

    def _read_one(self, frame: np.ndarray, quad: np.ndarray, width_factor: float) -> tuple[np.ndarray, Decoded]:
        rec, decoder = self._model()
        qw = float(np.linalg.norm(quad[1] - quad[0]))
        qh = float(np.linalg.norm(quad[3] - quad[0]))
        rw = int(np.clip(round(HEIGHT * qw / max(qh, 1.0) * width_factor / 8) * 8, 136, 256))
        crop = rectify(frame, quad, rw, HEIGHT)
        return crop, decoder.decode(rec.probs([crop])[0])

    def _text_detector(self) -> TextDetector:
        if self._detector is None:
            with self._lock:
                if self._detector is None:
                    self._detector = TextDetector(self.threads)
        return self._detector


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
