"""Plate text from the recogniser's per-timestep character probabilities.

The recogniser (PP-OCRv4, CTC) gives, for each of T timesteps, a probability over 6,625
symbols. A greedy read of that is often one character off on plates (``0``/``O``, ``1``/``I``,
``8``/``B``, a province read as a letter, a missing province). Here the read is constrained to
the plate grammars instead: for each template (a sequence of character classes) the best CTC
path through the timesteps is found (Viterbi), and the template whose best path is the most
probable wins. That fixes confusions by position from the model's own probabilities, rather
than by a fixed substitution table: a ``0`` in the letter position becomes whichever letter the
model found likeliest there (usually ``D`` or ``O``, whichever it saw), not always ``O``.

Templates (mainland plates, GA 36-2018):

    standard     P L S S S S S        blue, yellow, black (e.g. 皖A·12345)
    new energy   P L S S S S S S      green, 8 characters (e.g. 粤B·D12345)
    suffixed     P L S S S S X        X one of 警 学 挂 港 澳 领 (white police, coach, trailer,
                                      Hong Kong / Macau, consulate)

P is a province abbreviation, L a letter, S a serial character: a digit or a letter except I
and O (not used in serials, to avoid confusing them with 1 and 0). A plain alphanumeric plate
(no province character) is read free: 4 to 9 characters of A-Z 0-9 without I and O (read as 1
and 0, as most plate systems do), at least one a digit and one a letter; it pays a small prior
penalty so that a plate whose province the model missed is still read as a mainland plate when
the rest of it fits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROVINCES = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
SERIAL = DIGITS + "".join(c for c in LETTERS if c not in "IO")
SUFFIXES = "警学挂港澳领"
ALNUM = DIGITS + LETTERS
# what the model may print between characters of a plate: the centre dot, spaces, dashes
SEPARATORS = "·• -.:"
# log prior of a plain alphanumeric read against a mainland template (nats)
PLAIN_PRIOR = -4.0


@dataclass(frozen=True)
class Decoded:
    text: str
    kind: str                 # "standard" | "new_energy" | "suffixed" | "plain" | ""
    char_probs: tuple[float, ...]
    log_score: float          # log probability of the best path (all timesteps)
    free_log_score: float     # log probability of the unconstrained best path (whole vocabulary)

    @property
    def confidence(self) -> float:
        """Weakest character: the lowest probability the model gave a character of the read."""
        return min(self.char_probs) if self.char_probs else 0.0


class Vocabulary:
    """Index sets of the model's symbols: index 0 is the CTC blank."""

    def __init__(self, symbols: list[str]):
        self.symbols = symbols
        index = {s: i for i, s in enumerate(symbols)}
        missing = [c for c in PROVINCES + ALNUM + SUFFIXES if c not in index]
        if missing:
            raise ValueError(f"the recognition model lacks plate characters: {''.join(missing)}")
        self.separators = np.array([index[c] for c in SEPARATORS if c in index], dtype=np.int64)
        self.classes = {
            "P": np.array([index[c] for c in PROVINCES]),
            "L": np.array([index[c] for c in LETTERS]),
            "S": np.array([index[c] for c in SERIAL]),
            "X": np.array([index[c] for c in SUFFIXES]),
            "A": np.array([index[c] for c in SERIAL]),
        }
        # the plate symbols as columns of a narrower matrix: column 0 is the blank
        chars = PROVINCES + ALNUM + SUFFIXES
        self.columns = np.array([0] + [index[c] for c in chars])
        self.col = {c: i + 1 for i, c in enumerate(chars)}
        self.local = {name: np.array([self.col[symbols[i]] for i in idx]) for name, idx in self.classes.items()}
        self.local_symbols = ["blank"] + list(chars)


TEMPLATES = {
    "standard": "PLSSSSS",
    "new_energy": "PLSSSSSS",
    "suffixed": "PLSSSSX",
}
# log prior of each template (nats). An 8-character read of a 7-character plate needs only one
# character's timesteps split in two (8/B, 0/D seen one after the other), while a 7-character read
# of an 8-character plate must drop a character the model saw (a blank where it was sure of a
# character: many nats); so the new-energy template has to win by a margin.
TEMPLATE_PRIOR = {"standard": 0.0, "new_energy": -2.0, "suffixed": 0.0}


def _viterbi(logp_blank: np.ndarray, emissions: list[np.ndarray]) -> tuple[float, list[int]]:
    """Best CTC path through T timesteps for a fixed sequence of K character classes.

    logp_blank: (T,) log probability of "no character" at each timestep; emissions: K arrays
    (T,) the best log probability within each position's class. States 0..2K: even states are
    blanks, odd state 2k+1 is the k-th character. Returns (score, state of each timestep)."""
    T = logp_blank.shape[0]
    K = len(emissions)
    S = 2 * K + 1
    if T < K:
        return -math.inf, []
    em = np.empty((T, S))
    em[:, 0::2] = logp_blank[:, None]
    for k, e in enumerate(emissions):
        em[:, 2 * k + 1] = e
    neg = -1e30
    score = np.full(S, neg)
    score[0] = em[0, 0]
    score[1] = em[0, 1]
    back = np.zeros((T, S), dtype=np.int8)   # 0 stay, 1 from s-1, 2 from s-2
    odd = np.zeros(S, dtype=bool)
    odd[1::2] = True
    odd[1] = False                           # the first character has no character before it
    for t in range(1, T):
        stay = score
        step = np.concatenate(([neg], score[:-1]))
        skip = np.concatenate(([neg, neg], score[:-2]))
        skip = np.where(odd, skip, neg)      # skip a blank only into a character state
        best = np.maximum(stay, np.maximum(step, skip))
        back[t] = np.where(best == stay, 0, np.where(best == step, 1, 2))
        score = best + em[t]
    end = S - 1 if score[S - 1] >= score[S - 2] else S - 2
    total = float(score[end])
    states = [0] * T
    s = end
    for t in range(T - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    return total, states


class Decoder:
    def __init__(self, symbols: list[str]):
        self.vocab = Vocabulary(symbols)

    def decode(self, probs: np.ndarray, allow_plain: bool = True) -> Decoded:
        """probs: (T, V) softmax output of the recogniser for one image."""
        probs = np.asarray(probs, dtype=np.float32)
        eps = 1e-12
        v = self.vocab
        free = float(np.log(np.clip(probs.max(axis=1), eps, 1.0)).sum())
        # only the symbols a plate uses: blank + separators as "no character", then the classes
        sub = probs[:, v.columns].astype(np.float64)
        blank = sub[:, 0] + probs[:, v.separators].sum(axis=1)
        logp_blank = np.log(np.clip(blank, eps, 1.0))
        # in a serial, I and O are not used: the model's belief in them is belief in 1 and 0
        merged = sub.copy()
        merged[:, v.col["0"]] += sub[:, v.col["O"]]
        merged[:, v.col["1"]] += sub[:, v.col["I"]]
        class_best = {}
        class_arg = {}
        for name, idx in v.local.items():
            m = (merged if name in "SA" else sub)[:, idx]
            arg = m.argmax(axis=1)
            class_arg[name] = idx[arg]
            class_best[name] = np.log(np.clip(m[np.arange(len(m)), arg], eps, 1.0))
        probs, merged = sub, merged
        best: Decoded | None = None
        for kind, template in TEMPLATES.items():
            score, states = _viterbi(logp_blank, [class_best[c] for c in template])
            if not states or score == -math.inf:
                continue
            text, char_probs = self._read_path(probs, merged, states, template, v)
            cand = Decoded(text, kind, char_probs, score + TEMPLATE_PRIOR[kind], free)
            if best is None or cand.log_score > best.log_score:
                best = cand
        if allow_plain:
            plain = self._plain(probs, merged, logp_blank, class_best["A"], class_arg["A"], free)
            if plain is not None and (best is None or plain.log_score + PLAIN_PRIOR > best.log_score):
                best = plain
        return best or Decoded("", "", (), -math.inf, free)

    @staticmethod
    def _read_path(probs, merged, states, template, v) -> tuple[str, tuple[float, ...]]:
        """Each character: the label of its class with the highest summed probability over the
        timesteps its state held; its probability: the highest it reached there."""
        chars = []
        char_probs = []
        for k, cls in enumerate(template):
            ts = [t for t, s in enumerate(states) if s == 2 * k + 1]
            idx = v.local[cls]
            sub = (merged if cls in "SA" else probs)[np.ix_(ts, idx)]
            j = int(sub.sum(axis=0).argmax())
            chars.append(v.local_symbols[idx[j]])
            char_probs.append(float(sub[:, j].max()))
        return "".join(chars), tuple(char_probs)

    def _plain(self, raw, probs, logp_blank, best_a, arg_a, free) -> Decoded | None:
        """Greedy best path over blank + A-Z 0-9 (exact for an unconstrained length)."""
        is_char = best_a > logp_blank
        score = float(np.where(is_char, best_a, logp_blank).sum())
        chars, char_probs = [], []
        digits = 0     # characters the model itself saw as digits (not an I or O read as 1 or 0)
        prev = -1
        for t in range(len(is_char)):
            if not is_char[t]:
                prev = -1
                continue
            label = int(arg_a[t])
            p = float(probs[t, label])
            if label == prev:
                char_probs[-1] = max(char_probs[-1], p)
                continue
            chars.append(self.vocab.local_symbols[label])
            char_probs.append(p)
            if chars[-1] in DIGITS and raw[t, label] >= 0.5 * p:
                digits += 1
            prev = label
        if not 4 <= len(chars) <= 9 or not digits or all(c in DIGITS for c in chars):
            return None
        return Decoded("".join(chars), "plain", tuple(char_probs), score, free)


def is_mainland(text: str) -> bool:
    return len(text) >= 7 and text[0] in PROVINCES
