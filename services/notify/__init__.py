"""Notify: who must hear of a fact, on which channel, and its delivery with retries."""
