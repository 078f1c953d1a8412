"""Texts into pieces a voice synthesises one at a time: sentences, and over-long sentences cut at a
clause break, a space or, failing both, a fixed point. Bounded pieces bound the memory one request
takes, let other requests to the same voice take turns between pieces, and let a stream send audio
after the first piece.

Sentence rules (``split``), applied to each line of the text in turn:

1. A line break (one or more, any kind ``str.splitlines`` knows) always ends a piece.
2. A CJK full stop, question or exclamation mark (``。！？｡``) always ends a sentence, with or
   without a space after it.
3. ``!`` and ``?`` (runs such as ``?!`` too) end a sentence when the end of the line follows, or a
   CJK character directly, or whitespace and then anything but a lowercase letter. So
   ``"Is it?" he asked.`` and ``Yahoo! is`` stay whole, and ``a.b/c.d?x=1`` is no end.
4. ``.`` ends a sentence when the end of the line follows, or a CJK character directly, or whitespace
   and then an uppercase letter, a digit, a quote or bracket, a CJK character or any other
   non-lowercase character. So a ``.`` inside a token is never an end: decimals (3.14, 1,234.56,
   $2.50), times (10.30), versions (v1.2.3), URLs (www.example.com), e-mail addresses
   (bob.smith@example.co.uk); nor is one followed by a lowercase word (``approx. five``).
5. Exceptions to 4: no end after an abbreviation in ``_ABBREVIATIONS`` (Dr. Smith, e.g. Paris,
   U.S. Army, 9 a.m. Monday, Acme Inc. Today...; ``No.``, ``p.``, ``ch.``, ``vol.`` and the like
   only before a digit, as in ``No. 5`` or ``p. 42``), after
   an initial (J. R. R. Tolkien, John F. Kennedy), or after an enumerator that is all the sentence
   holds so far (``1. Open the box.``). ``etc.`` is the one abbreviation that does end a sentence
   before a capital (``apples, pears, etc. Then...``): it nearly always closes a list.
6. An ellipsis (``...`` or ``…``, ``……``) ends a sentence only like 4 with whitespace after it:
   before a lowercase word (``Wait... what?``) or directly before anything (``想想……好吧``) it is a
   pause, not an end; before a capital (``Wait... What?``) it is an end.
7. Closing quotes and brackets right after an end (``”’"')）」』`` and the like) stay with their
   sentence.

Then each sentence whose ``weight`` is over the limit is cut (``_cut``), and pieces with no letter or
digit are dropped; everything else of the text is kept, in order, each piece a stripped slice of it.

A piece's weight bounds its characters, not its audio: a digit is read as several words ("12" is
"twelve"), and a voice reads a script it has no rules for letter by letter (hanzi to an English voice:
15 phonemes each). What bounds the audio of one model run, and so its memory, is its phonemes:
``cut_phonemes`` cuts each sentence's phonemes, after phonemizing, into runs of at most a limit
(``voices.Voice.synthesize`` with ``max_phonemes``).
"""

from __future__ import annotations

import re
import unicodedata

#: weight of a wide (CJK, fullwidth) character, in Latin characters. Measured with Piper's
#: espeak-ng phonemizer (tests/server/test_text_split.py, test_wide_weight_covers_measured_ratio):
#: phoneme codepoints other than spaces and punctuation per letter or digit of the text, over the
#: texts in shared/texts.json: zh_* with voice "cmn" 344/72 = 4.78, en_* with "en-us" 750/666 = 1.13,
#: ratio 4.24 (worst pair, zh_medium 4.79 / en_medium 1.06: 4.53); ceil -> 5.
WIDE_WEIGHT = 5

#: phonemes one model run may hold per character of the piece bound (``sentence_max_chars``): English
#: text gives 1.13 phonemes per character with Piper's espeak-ng (the measurement above), so a piece of
#: ordinary English at the bound is never cut again; digits (10.9 per digit of "12345678901234567890")
#: and hanzi read by an English voice (14.9) are (tests/server/test_text_split.py -k outgrow -s prints them)
PHONEMES_PER_CHAR = 1.5
#: the fewest phonemes a run is cut to, however slow the speech or small the bound
MIN_RUN_PHONEMES = 10
#: the slowest pace a request may ask for (its length_scale)
MAX_LENGTH_SCALE = 10.0

#: a run of sentence-ending marks and the closing quotes and brackets that stay with them
_CLOSERS = "\"'”’»)]}）」』】》〉〕"
_END = re.compile(r"[.!?…。！？｡]+[" + re.escape(_CLOSERS) + "]*")
#: marks that end a sentence whatever follows
_CJK_END = frozenset("。！？｡")
#: places to cut an over-long sentence, best first: ASCII , ; : only before a space (not in 1,234
#: or 10:30 or https://), the CJK ones and dashes anywhere
_CLAUSE = re.compile(r"[,;:](?=\s|$)|[，；：、—–]")
#: abbreviations (lowercase, without the last dot) after which a "." is no end of sentence
_ABBREVIATIONS = frozenset("""
    dr mr mrs ms mx prof st mt rev fr sr jr gen col capt lt sgt gov sen rep hon
    vs etc e.g i.e a.m p.m u.s u.k u.s.a fig figs approx inc ltd co corp bros dept univ est
    cf al viz ca ave rd blvd ph.d jan feb mar apr jun jul aug sep sept oct nov dec
""".split())
#: abbreviations that are one only before a number (No. 5, p. 42, pp. 10-12, ch. 3, vol. 2, sec. 4, eq. 7):
#: before anything else the "." ends a sentence ("No. I will not go.")
_NUMBER_ABBREVIATIONS = frozenset("no nos p pp ch chap vol sec eq art para".split())
#: abbreviations that do end a sentence before a capital
_ENDING_ABBREVIATIONS = frozenset({"etc"})
#: opening quotes and brackets stripped from the front of the word before a "."
_OPENERS = "\"'“‘«([{（「『【《〈〔"
#: a sentence so far that is only an enumerator: "1." "(2)." "12)"
_ENUMERATOR = re.compile(r"[(\[]?\d{1,3}[.)]?")


def speakable(text: str) -> bool:
    """True when the text has a letter or digit (in any script): something a voice can say."""
    return any(ch.isalnum() for ch in text)


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _char_weight(ch: str) -> int:
    return WIDE_WEIGHT if _wide(ch) else 1


def weight(text: str) -> int:
    """The cost of synthesising ``text``, in Latin characters: a wide (CJK) character counts
    ``WIDE_WEIGHT``, anything else 1. Audio, and so memory, grows with it about linearly."""
    return sum(_char_weight(ch) for ch in text)


def _is_end(line: str, start: int, m: re.Match) -> bool:
    """Whether the run of marks ``m`` in ``line`` ends the sentence that began at ``start``."""
    marks = m.group(0)
    if _CJK_END.intersection(marks):
        return True
    rest = line[m.end():]
    after = rest.lstrip()
    if not after:
        return True  # end of the line
    spaced = len(after) < len(rest)
    ellipsis = "…" in marks or ".." in marks
    plain = marks.rstrip(_CLOSERS) == "."  # a single full stop: rule 5 applies
    nxt = after[0]
    if not spaced:
        # a mark inside a token (3.14, www.a.b, ?x=1) is none; before CJK it is, but an ellipsis
        # there is a pause (想想……好吧)
        if not _wide(nxt) or ellipsis:
            return False
        return not plain or not _exception(line, start, m, nxt)
    if nxt.islower():
        return False  # "Wait... what?", '"Is it?" he asked.', "approx. five"
    return not plain or not _exception(line, start, m, nxt)


def _exception(line: str, start: int, m: re.Match, nxt: str) -> bool:
    """Whether a single "." (rule 5) is no end although what follows it would make it one."""
    before = line[start:m.start()]
    word = re.search(r"\S*$", before).group(0).lstrip(_OPENERS)
    low = word.lower()
    if low in _NUMBER_ABBREVIATIONS:
        return nxt.isdigit()
    if low in _ABBREVIATIONS:
        return low not in _ENDING_ABBREVIATIONS
    if len(word) == 1 and word.isalpha() and word.isupper():
        return True  # an initial
    return _ENUMERATOR.fullmatch(before.strip()) is not None


def _sentences(line: str):
    start = 0
    for m in _END.finditer(line):
        if _is_end(line, start, m):
            yield line[start:m.end()]
            start = m.end()
    yield line[start:]


def _cut(sentence: str, limit: int) -> list[str]:
    """``sentence`` in pieces of weight at most ``limit``: each cut after the last clause break
    that leaves the piece at least a third of the limit, else after the last such space, else at
    the last character that fits (never before a combining mark)."""
    pieces = []
    while True:
        fit, total = 0, 0
        while fit < len(sentence) and total + _char_weight(sentence[fit]) <= limit:
            total += _char_weight(sentence[fit])
            fit += 1
        if fit == len(sentence):
            pieces.append(sentence)
            return pieces
        window = sentence[:fit]
        floor = limit // 3
        cut = max((c.end() for c in _CLAUSE.finditer(window)), default=0)
        if weight(window[:cut]) < floor:
            space = window.rfind(" ")
            if space >= 0 and weight(window[:space + 1]) >= floor:
                cut = space + 1
            else:
                cut = fit
                while cut > 1 and unicodedata.combining(sentence[cut]):
                    cut -= 1
        pieces.append(sentence[:cut])
        sentence = sentence[cut:].lstrip()


def split(text: str, limit: int) -> list[str]:
    """Pieces of ``weight`` at most ``limit`` that together hold all of ``text``'s speakable parts,
    in order: sentences by the rules in this module's docstring, over-long ones cut (``_cut``).
    Pieces are stripped; pieces with nothing to say are dropped. ``limit`` must be at least
    ``WIDE_WEIGHT``, or a CJK character could not fit in any piece."""
    if limit < WIDE_WEIGHT:
        raise ValueError(f"limit {limit} is below WIDE_WEIGHT ({WIDE_WEIGHT}): no CJK character fits")
    out = []
    for line in text.splitlines():
        for sentence in _sentences(line):
            sentence = sentence.strip()
            if sentence:
                out.extend(p.strip() for p in _cut(sentence, limit))
    return [p for p in out if speakable(p)]


def cut_phonemes(phonemes: list[str], limit: int) -> list[list[str]]:
    """One sentence's phonemes (Piper's ``phonemize`` gives a list per sentence) in runs of at most
    ``limit``: each cut at the last word break (a " " phoneme) that leaves the run at least a third of
    the limit, else at the limit. Word breaks at a run's ends are dropped, and so are empty runs."""
    runs = []
    rest = phonemes
    while True:
        while rest and rest[0] == " ":
            rest = rest[1:]
        if len(rest) <= limit:
            break
        window = rest[:limit + 1]  # a break right after the limit keeps the whole window
        cut = max((i for i, ph in enumerate(window) if ph == " " and i >= max(1, limit // 3)), default=limit)
        runs.append(rest[:cut])
        rest = rest[cut:]
    runs.append(rest)
    return [run[:len(run) - next((i for i, ph in enumerate(reversed(run)) if ph != " "), len(run))]
            for run in runs if any(ph != " " for ph in run)]
