"""text.split: sentences as a reader splits them, pieces bounded by weight, nothing speakable lost;
and text.WIDE_WEIGHT checked against Piper's own phonemizer."""

from __future__ import annotations

import json
import math
import random
import unicodedata
from pathlib import Path

import pytest

from piper_gpu_server import text as texts

#: the test texts in the repository: the users' own Chinese sentences and English ones for the test voice
TEXTS_JSON = Path(__file__).resolve().parents[2] / "piper_gpu" / "texts.json"
#: the six measured in text.py (the *_varied ones are the same sentences, reworded)
SHARED = {k: v for k, v in json.loads(TEXTS_JSON.read_text(encoding="utf-8")).items()
          if k[:3] in ("zh_", "en_") and not k.endswith("_varied")}

# --- sentences ------------------------------------------------------------------------------------
CASES = [
    # the failing example: one sentence, no stop inside it is an end
    ("Pi is 3.14 and the price is $2.50 at www.example.com, see Dr. Smith e.g.",
     ["Pi is 3.14 and the price is $2.50 at www.example.com, see Dr. Smith e.g."]),
    # ordinary sentences, questions, exclamations
    ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
    ("The quick brown fox jumps over the lazy dog.", ["The quick brown fox jumps over the lazy dog."]),
    ("Is it raining? I think so. Bring an umbrella!",
     ["Is it raining?", "I think so.", "Bring an umbrella!"]),
    ("What?! No way!!! Really?", ["What?!", "No way!!!", "Really?"]),
    ("no stop at the end", ["no stop at the end"]),
    ("It rained. 2020 was wetter.", ["It rained.", "2020 was wetter."]),
    # numbers
    ("The total is 1,234.56 dollars. Pay now.", ["The total is 1,234.56 dollars.", "Pay now."]),
    ("It costs $2.50 or €3.99 today. Buy it.", ["It costs $2.50 or €3.99 today.", "Buy it."]),
    ("We meet at 10.30 tomorrow. Be on time.", ["We meet at 10.30 tomorrow.", "Be on time."]),
    ("Update to v1.2.3 now. The old one breaks.", ["Update to v1.2.3 now.", "The old one breaks."]),
    ("Growth was 3.5% in 2023. It was 2.1% before.", ["Growth was 3.5% in 2023.", "It was 2.1% before."]),
    # abbreviations
    ("Dr. Smith met Mr. Jones and Mrs. Brown.", ["Dr. Smith met Mr. Jones and Mrs. Brown."]),
    ("Ms. Lee and Prof. Kim live on St. James Street.", ["Ms. Lee and Prof. Kim live on St. James Street."]),
    ("It was Ali vs. Frazier. The crowd roared.", ["It was Ali vs. Frazier.", "The crowd roared."]),
    ("Bring fruit, e.g. Apples or pears. Also bread.", ["Bring fruit, e.g. Apples or pears.", "Also bread."]),
    ("Use a safe word, i.e. One nobody guesses.", ["Use a safe word, i.e. One nobody guesses."]),
    ("The shop opens at 9 a.m. Monday and closes at 5 p.m. Friday.",
     ["The shop opens at 9 a.m. Monday and closes at 5 p.m. Friday."]),
    ("The U.S. Army arrived. They stayed.", ["The U.S. Army arrived.", "They stayed."]),
    ("See No. 5 and Fig. 3 for details.", ["See No. 5 and Fig. 3 for details."]),
    ("No. I will not go.", ["No.", "I will not go."]),
    ("See p. 42 and ch. 3 for the proof.", ["See p. 42 and ch. 3 for the proof."]),
    ("Read pp. 10-12 in vol. 2, sec. 4. Then eq. 7.", ["Read pp. 10-12 in vol. 2, sec. 4.", "Then eq. 7."]),
    ("Turn to p. 5. Read it aloud.", ["Turn to p. 5.", "Read it aloud."]),
    ("It weighs approx. 5 kg. That is heavy.", ["It weighs approx. 5 kg.", "That is heavy."]),
    ("Acme Inc. And Widgets Ltd. Merged last year.", ["Acme Inc. And Widgets Ltd. Merged last year."]),
    ("Martin Luther King Jr. Spoke here. Frank Sinatra Sr. Did not.",
     ["Martin Luther King Jr. Spoke here.", "Frank Sinatra Sr. Did not."]),
    ("Bring pens, paper, etc. Then sit down.", ["Bring pens, paper, etc.", "Then sit down."]),
    ("Bring pens, paper, etc.", ["Bring pens, paper, etc."]),
    ("Pens, paper, etc. are on the desk.", ["Pens, paper, etc. are on the desk."]),
    # URLs and e-mail addresses
    ("Visit www.example.com. It is free.", ["Visit www.example.com.", "It is free."]),
    ("Open https://a.b/c.d?x=1 in a browser. Then log in.",
     ["Open https://a.b/c.d?x=1 in a browser.", "Then log in."]),
    ("Write to bob.smith@example.co.uk today. He answers fast.",
     ["Write to bob.smith@example.co.uk today.", "He answers fast."]),
    # initials
    ("J. R. R. Tolkien wrote it. John F. Kennedy read it.",
     ["J. R. R. Tolkien wrote it.", "John F. Kennedy read it."]),
    # ellipses: before a lowercase word a pause, before a capital an end
    ("Wait... what?", ["Wait... what?"]),
    ("Wait... What? Go on.", ["Wait...", "What?", "Go on."]),
    ("Well… maybe. Fine… You win.", ["Well… maybe.", "Fine…", "You win."]),
    # quotes and brackets stay with their sentence
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ('"Is it true?" he asked. "Yes!" She nodded.', ['"Is it true?" he asked.', '"Yes!"', "She nodded."]),
    ("She smiled (at last.) The end.", ["She smiled (at last.)", "The end."]),
    ("He said ‘No.’ She said “Yes.” Done.", ["He said ‘No.’", "She said “Yes.”", "Done."]),
    # lines
    ("First line\nSecond line", ["First line", "Second line"]),
    ("Title\n\n\nBody text. More text.\r\nLast", ["Title", "Body text.", "More text.", "Last"]),
    ("1. Open the box.\n2. Take out the manual.", ["1. Open the box.", "2. Take out the manual."]),
    # Chinese
    ("你好，世界。今天天气很好！你去哪里？", ["你好，世界。", "今天天气很好！", "你去哪里？"]),
    ("这个苹果3.14元。那个更贵。", ["这个苹果3.14元。", "那个更贵。"]),
    ("第2.5版已经发布了！请更新。", ["第2.5版已经发布了！", "请更新。"]),
    ("我们明天上午10.30开会；请准时到。", ["我们明天上午10.30开会；请准时到。"]),
    ("他说：“你好。”然后走了。", ["他说：“你好。”", "然后走了。"]),
    ("「真的吗？」她问。『是的！』", ["「真的吗？」", "她问。", "『是的！』"]),
    ("我想想……好吧。", ["我想想……好吧。"]),
    ("价格是1,234.56元（含税）。谢谢！", ["价格是1,234.56元（含税）。", "谢谢！"]),
    ("这是一个测试文本，用于验证GPU加速效果。", ["这是一个测试文本，用于验证GPU加速效果。"]),
    ("太好了!我们走吧?好的", ["太好了!", "我们走吧?", "好的"]),
    ("第一行\n第二行。第三句", ["第一行", "第二行。", "第三句"]),
    ("模型大小是63.5 MB。加载只需0.8秒！", ["模型大小是63.5 MB。", "加载只需0.8秒！"]),
    ("请发邮件到 support@example.com。我们会回复。", ["请发邮件到 support@example.com。", "我们会回复。"]),
    ("版本 v2.0.1 修复了问题。升级吧！", ["版本 v2.0.1 修复了问题。", "升级吧！"]),
    ("温度是-3.5度？不会吧！", ["温度是-3.5度？", "不会吧！"]),
    ("早上8:30出发，下午5:00回来。", ["早上8:30出发，下午5:00回来。"]),
    ("你吃饭了吗？吃了。你呢？", ["你吃饭了吗？", "吃了。", "你呢？"]),
    ("他问：“为什么？”我说：“不知道。”", ["他问：“为什么？”", "我说：“不知道。”"]),
    ("这本书（第3版）很好。推荐！", ["这本书（第3版）很好。", "推荐！"]),
    ("等一下……我马上来。", ["等一下……我马上来。"]),
    ("北京、上海、广州等城市都有分店。", ["北京、上海、广州等城市都有分店。"]),
    ("一、准备材料。二、开始制作。", ["一、准备材料。", "二、开始制作。"]),
    ("今天星期五！明天星期六！后天星期天！", ["今天星期五！", "明天星期六！", "后天星期天！"]),
    ("这是《红楼梦》。那是《西游记》。", ["这是《红楼梦》。", "那是《西游记》。"]),
    ("折扣是8.5折。原价￥99.90。", ["折扣是8.5折。", "原价￥99.90。"]),
    ("第一章\n从前有座山。山里有座庙。", ["第一章", "从前有座山。", "山里有座庙。"]),
    # mixed Chinese and English
    ("我今天用了 GPU 版本。It is 3.5 times faster! 真的吗？",
     ["我今天用了 GPU 版本。", "It is 3.5 times faster!", "真的吗？"]),
    ("请访问 www.example.com 下载 v1.2.3 版本。Thanks!", ["请访问 www.example.com 下载 v1.2.3 版本。", "Thanks!"]),
    ("Dr. Wang 说今天下午3.30开会。OK? 好的。", ["Dr. Wang 说今天下午3.30开会。", "OK?", "好的。"]),
    ("It works.真的很快。", ["It works.", "真的很快。"]),
    ("他用的是 iPhone。It costs $999. 太贵了！", ["他用的是 iPhone。", "It costs $999.", "太贵了！"]),
    ("他叫 Mr. Li，住在 No. 8 大街。", ["他叫 Mr. Li，住在 No. 8 大街。"]),
    ("我们用的是 CUDA 12.4 和 cuDNN 9.1.1。速度快了三倍。", ["我们用的是 CUDA 12.4 和 cuDNN 9.1.1。", "速度快了三倍。"]),
    ("The API returns JSON。然后保存到 data.json 文件。", ["The API returns JSON。", "然后保存到 data.json 文件。"]),
    ("Dr. Zhang 明天来。He arrives at 9 a.m. 别迟到。", ["Dr. Zhang 明天来。", "He arrives at 9 a.m. 别迟到。"]),
    ("GPU 真快！CPU 太慢了。Right?", ["GPU 真快！", "CPU 太慢了。", "Right?"]),
    ("请打开 https://example.com/a.b?c=1 看看。好吗？", ["请打开 https://example.com/a.b?c=1 看看。", "好吗？"]),
    ("我在用 Python 3.12。It works well. 没问题。", ["我在用 Python 3.12。", "It works well.", "没问题。"]),
    ("Hello，你好。Goodbye，再见！", ["Hello，你好。", "Goodbye，再见！"]),
    ("他是 J. K. Rowling 的粉丝。", ["他是 J. K. Rowling 的粉丝。"]),
    ("欢迎光临！Welcome! 请进。", ["欢迎光临！", "Welcome!", "请进。"]),
    ("这个 bug 在 issue #19 里。Fix it, e.g. Tomorrow. 好。", ["这个 bug 在 issue #19 里。", "Fix it, e.g. Tomorrow.", "好。"]),
    # nothing to say between the sentences is dropped
    ("One. ... Two.", ["One.", "Two."]),
    ("One. --- Two.", ["One.", "--- Two."]),
    ("Hi! ... ? Bye.", ["Hi!", "Bye."]),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_split_sentences(text, expected):
    assert texts.split(text, 200) == expected


def _cjk(text: str) -> bool:
    return any(unicodedata.east_asian_width(ch) in ("W", "F") for ch in text)


def test_table_is_big_enough():
    """At least 40 real sentences in each language: English alone, and Chinese (alone or mixed with
    English, as the users write it)."""
    english = [text for text, _ in CASES if not _cjk(text)]
    chinese = [text for text, _ in CASES if _cjk(text)]
    assert len(english) >= 40 and len(chinese) >= 40, (len(english), len(chinese))


# --- bounds and content ---------------------------------------------------------------------------
def _long_words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "x", "antidisestablishmentarianism", "3.14", "Dr.",
             "e.g.", "Hello.", "why?", "no!", "a,", "b;", "—", "你好", "世界。", "GPU", "和", "，"]
    return " ".join(rng.choice(words) for _ in range(n))


PROPERTY_TEXTS = {
    **{f"shared_{k}": v for k, v in SHARED.items()},
    "words": ("the quick brown fox jumps over the lazy dog " * 80).strip(),
    "random_words": _long_words(1500, 1),
    "random_words_lines": "\n".join(_long_words(60, seed) for seed in range(30)),
    "hanzi_3000": "".join(chr(0x4E00 + (i * 37) % 20000) for i in range(3000)),
    "hanzi_clauses": "没有标点的中文句子，" * 300,
    "one_word_3000": "a" * 3000,
    "one_word_mixed": ("abc" + "中" + "1.2") * 500,
    "combining": ("e\u0301" * 40 + " ") * 20,
    "sentences": "One two. Three four! Five? " * 100,
    "mixed": "我今天用了 GPU 版本。It is 3.5 times faster! 真的吗？" * 60,
}


def _squeeze(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


def _check(text: str, pieces: list[str], limit: int) -> None:
    # bounded, stripped, speakable
    for p in pieces:
        assert texts.weight(p) <= limit, (limit, p)
        assert p == p.strip() and texts.speakable(p)
    # each piece is a slice of the text, in order
    at = 0
    for p in pieces:
        found = text.find(p, at)
        assert found >= 0, p
        at = found + len(p)
    # all speakable content kept: with whitespace removed, the pieces are the text less characters
    # (from dropped pieces) that are not letters or digits
    src, got = _squeeze(text), _squeeze("".join(pieces))
    j = 0
    for ch in src:
        if j < len(got) and ch == got[j]:
            j += 1
        else:
            assert not ch.isalnum(), f"lost {ch!r}"
    assert j == len(got)
    assert [c for c in got if c.isalnum()] == [c for c in src if c.isalnum()]


@pytest.mark.parametrize("limit", [20, 50, 200])
@pytest.mark.parametrize("name", sorted(PROPERTY_TEXTS))
def test_split_bounds_weight_and_keeps_content(name, limit):
    text = PROPERTY_TEXTS[name]
    _check(text, texts.split(text, limit), limit)


@pytest.mark.parametrize("text, _", CASES)
@pytest.mark.parametrize("limit", [5, 12, 30])
def test_split_table_texts_at_small_limits(text, _, limit):
    _check(text, texts.split(text, limit), limit)


def test_weight_counts_wide_characters():
    assert texts.weight("") == 0
    assert texts.weight("abc 1.") == 6
    assert texts.weight("你好") == 2 * texts.WIDE_WEIGHT
    assert texts.weight("GPU版本。") == 3 + 3 * texts.WIDE_WEIGHT  # 。 is wide too
    assert texts.weight("ＡＢ") == 2 * texts.WIDE_WEIGHT  # fullwidth


def test_cjk_without_breaks_is_cut_to_fit():
    pieces = texts.split("中" * 100, 50)
    assert pieces == ["中" * (50 // texts.WIDE_WEIGHT)] * (100 // (50 // texts.WIDE_WEIGHT))


def test_long_sentence_cut_at_clause_then_space():
    long = "alpha beta gamma, " * 10 + "delta"
    assert all(p.endswith(",") for p in texts.split(long, 60)[:-1])
    pieces = texts.split("word " * 40, 50)
    assert all(p.split() == ["word"] * len(p.split()) for p in pieces)
    assert texts.split("你好世界，" * 10, 30) == ["你好世界，"] * 10
    # a comma inside a number is no clause break
    assert texts.split("costs 1,234,567 units", 14) == ["costs", "1,234,567", "units"]


def test_limit_below_wide_weight_is_refused():
    with pytest.raises(ValueError):
        texts.split("你好", texts.WIDE_WEIGHT - 1)


@pytest.mark.parametrize("text", ["?!", "... --- ,,,", "。！？", "\n\n", "(\"')", ""])
def test_nothing_to_speak(text):
    assert texts.split(text, 200) == [] and not texts.speakable(text)


# --- WIDE_WEIGHT, measured --------------------------------------------------------------------------
def _sounds(phonemes: list[str]) -> int:
    """Phoneme codepoints as Piper gives them to the voice (NFD, one id each), less spaces and
    punctuation (clause and sentence marks, which carry no sound of their own)."""
    return sum(1 for ph in phonemes if not ph.isspace() and not unicodedata.category(ph).startswith("P"))


def _letters(text: str) -> int:
    return sum(1 for ch in text if ch.isalnum())


def measure_ratios() -> dict[str, tuple[int, int]]:
    """(sound phonemes, letters and digits) of each shared text: zh_* with espeak voice "cmn",
    en_* with "en-us", as Piper's own phonemizer gives them."""
    espeak = pytest.importorskip("piper.phonemize_espeak")
    phonemizer = espeak.EspeakPhonemizer()
    out = {}
    for key, value in SHARED.items():
        if key[:3] in ("zh_", "en_"):
            voice = "cmn" if key.startswith("zh_") else "en-us"
            phonemes = [ph for sentence in phonemizer.phonemize(voice, value) for ph in sentence]
            out[key] = (_sounds(phonemes), _letters(value))
    return out


def test_wide_weight_covers_measured_ratio():
    """WIDE_WEIGHT >= (phonemes per character of Chinese) / (phonemes per character of English),
    over all the shared texts, and for the worst pair of single texts. Reproduce the numbers in
    text.py with: .venv/bin/python -m pytest -q tests/server/test_text_split.py -k wide -s"""
    counts = measure_ratios()
    zh = {k: v for k, v in counts.items() if k.startswith("zh_")}
    en = {k: v for k, v in counts.items() if k.startswith("en_")}
    if not zh or not en:
        pytest.skip("shared/texts.json has no zh_* and en_* texts")

    def pooled(group):
        return sum(s for s, _ in group.values()) / sum(n for _, n in group.values())

    for key, (sounds, letters) in counts.items():
        print(f"{key}: {sounds} phonemes / {letters} characters = {sounds / letters:.2f}")
    ratio = pooled(zh) / pooled(en)
    worst = max(s / n for s, n in zh.values()) / min(s / n for s, n in en.values())
    print(f"zh {pooled(zh):.2f}, en {pooled(en):.2f}: ratio {ratio:.2f} (worst pair {worst:.2f}); "
          f"ceil {math.ceil(ratio)}; WIDE_WEIGHT {texts.WIDE_WEIGHT}")
    assert ratio <= texts.WIDE_WEIGHT
    assert worst <= texts.WIDE_WEIGHT


# --- phoneme runs: what bounds a model run's audio -------------------------------------------------
PHONEME_SENTENCES = {
    "words": list("ðə kwɪk bɹaʊn fɑːks dʒʌmps ˈoʊvɚ ðə leɪzi dɑːɡ " * 12),
    "one_long_word": list("wʌnmɪljən" * 40),
    "breaks_only": [" "] * 30,
    "breaks_at_the_ends": [" ", " "] + list("ab cd ef") + [" "],
    "empty": [],
}


@pytest.mark.parametrize("limit", [1, 3, 10, 30, 300])
@pytest.mark.parametrize("name", sorted(PHONEME_SENTENCES))
def test_cut_phonemes_bounds_every_run_and_keeps_every_phoneme(name, limit):
    phonemes = PHONEME_SENTENCES[name]
    runs = texts.cut_phonemes(phonemes, limit)
    assert all(0 < len(run) <= limit for run in runs), [len(run) for run in runs]
    assert all(run[0] != " " and run[-1] != " " for run in runs)
    # every phoneme but the word breaks at a cut is kept, in order
    assert [ph for run in runs for ph in run if ph != " "] == [ph for ph in phonemes if ph != " "]


def test_cut_phonemes_cuts_at_word_breaks():
    words = list("ab cd ef gh")
    assert texts.cut_phonemes(words, 5) == [list("ab cd"), list("ef gh")]
    assert texts.cut_phonemes(words, 100) == [words]
    # no break far enough in: cut at the limit
    assert texts.cut_phonemes(list("abcdefghij"), 4) == [list("abcd"), list("efgh"), list("ij")]
    # a break too early (under a third of the limit) is not taken
    assert texts.cut_phonemes(list("a bcdefghijkl"), 9) == [list("a bcdefgh"), list("ijkl")]


def test_digits_and_hanzi_outgrow_their_characters():
    """Why pieces are also cut by phonemes: Piper's espeak-ng gives an English voice many times more
    phonemes per character for digits and hanzi than for words (PHONEMES_PER_CHAR's note). The figures
    in text.py and docs/server.md: .venv/bin/python -m pytest tests/server/test_text_split.py -k outgrow -s"""
    espeak = pytest.importorskip("piper.phonemize_espeak")
    phonemizer = espeak.EspeakPhonemizer()

    def phonemes(text: str, voice: str = "en-us") -> int:
        count = sum(len(s) for s in phonemizer.phonemize(voice, text))
        print(f"{voice} {text[:24]!r}: {count} phonemes, {count / len(text):.2f} per character")
        return count

    digits, hanzi = "12345678901234567890", "中文语音合成测试"
    assert phonemes(SHARED["en_medium"]) / len(SHARED["en_medium"]) <= texts.PHONEMES_PER_CHAR
    assert phonemes(SHARED["en_long"]) / len(SHARED["en_long"]) <= texts.PHONEMES_PER_CHAR
    assert phonemes(digits) / len(digits) > 3 * texts.PHONEMES_PER_CHAR
    assert phonemes(hanzi) / len(hanzi) > 3 * texts.PHONEMES_PER_CHAR
    assert phonemes(hanzi, "cmn") < phonemes(hanzi)  # a voice for the script reads it as words
