"""The second way of finding plates: PP-OCRv4's text detector (DBNet), which ships inside the
rapidocr-onnxruntime wheel beside the recogniser, run by onnxruntime on a small copy of the frame.

It was trained on real photographs of text, so it finds plates the colour and stroke proposals
of finder.py miss (odd colours, odd light, a plate touching a grille), at a price: about 30 ms
for a 1280x720 frame scaled to 480 wide, on one core, against about 550 ms for rapidocr's own
pipeline at full size. The reader asks it only when the cheap proposals gave no confident read.

Every text line it finds that could be a plate (shaped like one, big enough to read) becomes a
candidate quadrilateral in the full frame; finder.refine and finder.char_count then tighten and
score it like any other proposal.
"""
from __future__ import annotations

import threading
from importlib.resources import files

import cv2
import numpy as np

from edge.lpr.finder import MIN_PLATE_W, Candidate, _aspect, order_quad
from edge.lpr.recognizer import MODEL_PACKAGE

MODEL_FILE = "models/ch_PP-OCRv4_det_infer.onnx"
WORK_WIDTH = 480            # measured on rendered scenes: 480 finds 99% of plates in 31 ms, 640 100% in 57 ms
THRESHOLD = 0.3             # text probability of a pixel (DBNet's usual binarisation)
UNCLIP = 1.6                # a text region grows by area*UNCLIP/perimeter on each side (as DBNet's post-processing)
ASPECT = (1.5, 9.0)         # of a grown text line that may be a plate
MAX_PROPOSALS = 8
_CLAHE = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class TextDetector:
    """Thread-safe; loads the model on construction."""

    def __init__(self, threads: int = 1, work_width: int = WORK_WIDTH):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(files(MODEL_PACKAGE) / MODEL_FILE), so,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.work_width = work_width
        self._lock = threading.Lock()

    def probability(self, frame: np.ndarray, work_width: int | None = None,
                    enhance: bool = False) -> tuple[np.ndarray, float, float]:
        """The text-probability map of a scaled copy (its local contrast evened out when
        `enhance`), and the scale back to the frame (x, y)."""
        H, W = frame.shape[:2]
        w = min(work_width or self.work_width, max(32, W // 32 * 32))
        h = max(32, int(round(H * w / W / 32)) * 32)
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if enhance:
            lab = cv2.cvtColor(small, cv2.COLOR_BGR2LAB)
            lab[:, :, 0] = _CLAHE.apply(lab[:, :, 0])
            small = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
        x = ((small[:, :, ::-1].astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1)[None]
        with self._lock:
            prob = self.session.run(None, {self.input: np.ascontiguousarray(x)})[0][0, 0]
        return prob, W / w, H / h

    def proposals(self, frame: np.ndarray, work_width: int | None = None, enhance: bool = False) -> list[Candidate]:
        prob, sx, sy = self.probability(frame, work_width, enhance)
        mask = (prob > THRESHOLD).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = []
        for c in contours:
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(c)
            if min(rw, rh) < 2:
                continue
            grow = rw * rh * UNCLIP / (2 * (rw + rh))
            box = cv2.boxPoints(((cx, cy), (rw + 2 * grow, rh + 2 * grow), angle)) * np.array([sx, sy], np.float32)
            quad = order_quad(box)
            qw = float(np.linalg.norm(quad[1] - quad[0]))
            qh = float(np.linalg.norm(quad[3] - quad[0]))
            if qh < 6 or qw < 0.7 * MIN_PLATE_W or not ASPECT[0] <= qw / qh <= ASPECT[1]:
                continue
            region = np.zeros_like(mask)
            cv2.drawContours(region, [c], -1, 1, -1)
            out.append(Candidate(quad.astype(np.float32), float(cv2.mean(prob, mask=region)[0]), "det"))
        # the most plate-shaped lines first; a street full of signs must not cost a refine each
        out.sort(key=lambda c: -(c.score + max(0.0, 1 - abs(np.log(_aspect(c.quad) / 3.4)))))
        return out[:MAX_PROPOSALS]
