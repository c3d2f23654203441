"""The text clean-up CLIP's tokenizer does before it splits words, without ftfy.

CLIP (OpenAI's ``simple_tokenizer.py``, open_clip's ``tokenizer.py``) runs ``ftfy.fix_text``,
then ``html.unescape`` twice, collapses whitespace and lowercases. This module does the same
with the standard library, for the parts of ``fix_text`` that change well-formed text, each a
fixed character table (ftfy 6's defaults, as its documentation describes them):

* HTML entities decoded first, unless the text holds a "<";
* ANSI terminal escapes (ESC [ digits/semicolons letter) removed;
* Latin ligatures and legacy digraphs spelt out (ﬁ → fi, ĳ → ij, Ǆ → DŽ);
* fullwidth and halfwidth forms (U+FF01-U+FFEF) and the ideographic space made standard width,
  by their NFKC decomposition;
* curly quotes straightened (‘ ’ ‚ ‛ ʼ → ', “ ” „ ‟ → ");
* control characters removed (U+0000-U+0008, U+000B, U+000E-U+001F, U+007F, U+206A-U+206F,
  U+FEFF, U+FFF9-U+FFFC);
* NFC normalisation.

What is left out is ftfy's repair of mojibake (text decoded with the wrong codec, such as
"cafÃ©" for "café") and of surrogates: for such text the token ids may differ from CLIP's.
Line breaks need no step: whitespace is collapsed anyway (``str.split``, as open_clip does).
"""

from __future__ import annotations

import html
import re
import unicodedata

_TERMINAL_ESCAPE = re.compile("\x1b\\[[0-9;]*[a-zA-Z]")

_LIGATURES = str.maketrans({
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn",
    "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
    "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
})


def _width_table() -> dict[int, str]:
    table = {0x3000: " "}
    for code in range(0xFF01, 0xFFF0):
        standard = unicodedata.normalize("NFKC", chr(code))
        if standard != chr(code):
            table[code] = standard
    return table


_WIDTH = _width_table()
_QUOTES = str.maketrans({**dict.fromkeys("\u02bc\u2018\u2019\u201a\u201b", "'"),
                         **dict.fromkeys("\u201c\u201d\u201e\u201f", '"')})
_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
                          *range(0xFFF9, 0xFFFD)])


def fix_text(text: str) -> str:
    """The well-formed-text part of ``ftfy.fix_text`` (see the module docstring). Like ftfy,
    it decodes HTML entities first unless the text holds a "<" (it may be HTML markup)."""
    if "<" not in text:
        text = html.unescape(text)
    text = _TERMINAL_ESCAPE.sub("", text)
    text = text.translate(_LIGATURES).translate(_WIDTH).translate(_QUOTES).translate(_CONTROL)
    return unicodedata.normalize("NFC", text)


def clean_text(text: str) -> str:
    """What CLIP's tokenizer splits: fixed, HTML-unescaped twice, whitespace collapsed, lowercase."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return " ".join(text.split()).lower()
