"""Texts into pieces a voice synthesises one at a time: sentences, and over-long sentences cut at a
clause break, a space or, failing both, a fixed length. Bounded pieces bound the memory one request
takes, let other requests to the same voice take turns between pieces, and let a stream send audio
after the first piece."""

from __future__ import annotations

import re

#: ends of sentences (Latin and CJK), each kept with its sentence
_SENTENCE = re.compile(r"[^.!?。！？…\n]*(?:[.!?。！？…]+[\"'”’)）」』]*|\n+|$)")
#: places to cut an over-long sentence, best first
_CLAUSE = re.compile(r"[,;:，；：、—–]")


def speakable(text: str) -> bool:
    """True when the text has a letter or digit (in any script): something a voice can say."""
    return any(ch.isalnum() for ch in text)


def _cut(sentence: str, limit: int) -> list[str]:
    pieces = []
    while len(sentence) > limit:
        window = sentence[:limit]
        cut = max((m.end() for m in _CLAUSE.finditer(window)), default=0)
        if cut < limit // 3:
            space = window.rfind(" ")
            cut = space + 1 if space >= limit // 3 else limit
        pieces.append(sentence[:cut])
        sentence = sentence[cut:]
    pieces.append(sentence)
    return pieces


def split(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters that together hold all of ``text``'s speakable parts,
    in order; pieces with nothing to say are dropped."""
    out = []
    for m in _SENTENCE.finditer(text):
        sentence = m.group(0).strip()
        if not sentence:
            continue
        out.extend(p.strip() for p in _cut(sentence, limit))
    return [p for p in out if speakable(p)]
