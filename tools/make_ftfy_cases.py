"""Writes tests/fixtures/tokenizers/ftfy/cases.json: texts and what ftfy 6.3's `fix_text` makes of them, for the
differential test of cliprt's port (src/tokenizer/ftfy.rs).

    tools/.venv/bin/python tools/make_ftfy_cases.py

The texts: intended strings in many scripts; their mojibake through every code page ftfy knows (and strict
Windows-1252 with lost bytes, double mojibake, byte A0 turned into a space, CESU-8 and Java NULs, mojibake inside
good text, upper- and lower-cased); HTML references (ftfy's upper-case names, partial and numeric ones); several
lines at once; and seeded random strings over the characters ftfy's heuristics look at.
"""

import json
import os
import random

import ftfy
import ftfy.bad_codecs  # noqa: F401 (registers the sloppy codecs)
from ftfy import chardata

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizers", "ftfy", "cases.json")

INTENDED = [
    "café", "naïve résumé", "Ünïcödé", "señor año", "crème brûlée", "São Paulo", "Zürich", "Ærøskøbing", "œuvre",
    "façade", "Straße", "“smart quotes”", "‘single’", "en–dash em—dash", "ellipsis…", "€100", "£5 ¥10", "© 2024 ®",
    "Trademark™", "½ ¼ ¾", "20°C", "±3", "2×3÷4", "µs", "• bullet", "→ ←", "✓ ✗", "😀 emoji", "👍🏽 thumbs",
    "日本語のテキスト", "中文字符", "한국어", "Привет мир", "Ελληνικά", "Ελλάδα", "عربي", "עברית", "हिन्दी", "ไทย",
    "Łódź", "Kraków", "Čeština", "Ğüşıöç", "Ä ä Ö ö Ü ü", "à la carte", "À bientôt", "Città", "àquele", "à quel",
    "fàcil", "a\u00a0b", "soft\u00adhyphen", "NIÑO", "ÉCOLE", "Ça va", "déjà vu", "Noël", "Ōsaka", "Việt Nam",
    "Ñandú", "Å", "Øre", "Þór", "ðe", "ﬁne", "ǅemal", "Ａ", "x²", "¡Hola!", "¿Qué?", "«guillemets»", "‹›", "†‡",
    "§ 5 ¶", "¢", "¤", "¦", "¨", "¬", "¯", "´", "¸", "ª º", "ƒ", "ˆ", "˜", "‰", "Œ œ", "Š š", "Ž ž", "Ÿ",
    "a photo of a café in Zürich", "The “best” résumé — ever…", "Ça coûte 5 €", "Größe: 42–44",
]

ENCODINGS = chardata.CHARMAP_ENCODINGS + ["windows-1252", "cp1251", "cp1250", "iso-8859-15", "cp850"]


def mojibake(s, enc):
    """`s` in UTF-8 read as `enc`, or None where that code page cannot read it."""
    try:
        return s.encode("utf-8").decode(enc)
    except UnicodeDecodeError:
        return None


def cesu8(s):
    """`s` with characters above U+FFFF as CESU-8 surrogate pairs (and NUL as Java's C0 80)."""
    out = bytearray()
    for c in s:
        n = ord(c)
        if n == 0:
            out += b"\xc0\x80"
        elif n > 0xFFFF:
            n -= 0x10000
            for half in (0xD800 + (n >> 10), 0xDC00 + (n & 0x3FF)):
                out += chr(half).encode("utf-8", "surrogatepass")
        else:
            out += c.encode("utf-8")
    return bytes(out)


def texts():
    out = list(INTENDED)
    for s in INTENDED:
        for enc in ENCODINGS:
            m = mojibake(s, enc)
            if m is None:
                continue
            out += [m, m.upper(), m.lower(), f"Good text — {m} — more", f"{m} {s}", m.replace("\u00a0", " ")]
            twice = mojibake(m, enc)
            if twice is not None:
                out.append(twice)
        out.append(s.encode("utf-8").decode("windows-1252", errors="replace"))
        out.append(s.encode("utf-8").decode("latin-1"))
    for s in ["😀 emoji", "👍🏽 thumbs", "a\x00b 😀", "𝄞 music"]:
        for enc in ["sloppy-windows-1252", "latin-1", "sloppy-windows-1251"]:
            out.append(cesu8(s).decode(enc))
    out += [
        "&NTILDE; &EACUTE; &eacute; &Eacute; &AMP; &amp; &ampx; &lt;b&gt;", "&#x41;&#65;&#x110000;&#0;&#128;&#;",
        "&#xd800; &#x1F600; &#9999999999; &#65 ;", "&amp;amp; &AElig; &aelig; &AELIG;", "&nbsp;&NBSP;&Nbsp;",
        "x &sup2; &SUP2; y", "a &notin; b &NOTIN;", "&" + "a" * 25 + ";", "&" + "a" * 24 + ";",
        "<b>&eacute;</b>", "line one &eacute;\n<p>two &eacute;</p>\nthree &eacute;", "caf\u00c3\u00a9\r\nna\u00c3\u00afve",
        "\x1b[31mred\x1b[0m Ã©", "a\x80b\x81c\x9fd", "\u2028sep\u2029", "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ", "ＡＢＣ　ｘｙｚ！",
        "\ufeffbom", "a\u206ab", "Ã\u00a0", "Ã ", "la Ã  la", "Ã quele", "fÃ cil", "Ã s vezes", "Â ", "x Â y",
        "Ã©Ã©Ã©", "ÃƒÂ©", "Ã¢â‚¬â„¢", "â€œquotedâ€\x9d", "â€œquotedâ€�", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "вЂњtestвЂќ",
        "Ã\x1a", "â€\x1a", "Ã?", "â?", "√±", "‚Äô", "Ø§Ù„Ø¹Ø±Ø¨ÙŠØ©", "à²¨", "β€™", "ā€", "×²",
        "Ð Ð¾Ñ Ñ Ð¸Ñ", "Ã¶ Ã¤ Ã¼ ok", "ok Ã¶Ã¤Ã¼ ok Ã", "", " ", "\n", "plain ascii text",
    ]
    pool = ("ÃÂâ€™œžŸ¡¢£¤¥¦§¨©ª«¬®¯°±²³´µ¶·¸¹º»¼½¾¿" + "".join(chr(c) for c in range(0xC0, 0x100))
            + "\x80\x81\x8d\x90\x9d\x9f\u00a0 abcxyzABC.,!?'\"-–—…ВГРСΒΓΞΟ│┌═╬▀░вЂ√≈‚Ä€ÙØàā×" + "\n<&;#")
    rng = random.Random(1234)
    for _ in range(600):
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 14))))
    for _ in range(300):
        s = rng.choice(INTENDED)
        enc = rng.choice(ENCODINGS)
        m = mojibake(s, enc) or s
        cut = rng.randint(0, len(m))
        out.append(m[:cut] + rng.choice(["", " ", "\u00a0", "x", "\x1a", "?"]) + m[cut:])
    seen, unique = set(), []
    for s in out:
        if s not in seen and not any(0xD800 <= ord(c) <= 0xDFFF for c in s):
            seen.add(s)
            unique.append(s)
    return unique


def main():
    cases = []
    for s in texts():
        fixed = ftfy.fix_text(s)
        if any(0xD800 <= ord(c) <= 0xDFFF for c in fixed):
            continue
        cases.append([s, fixed])
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"ftfy": ftfy.__version__, "cases": cases}, f, ensure_ascii=False, indent=0)
    changed = sum(a != b for a, b in cases)
    print(f"{len(cases)} cases, {changed} changed by ftfy -> {OUT}")


if __name__ == "__main__":
    main()
