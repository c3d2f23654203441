"""CLIP's tokenizer: byte-level BPE over the 49,408-token vocabulary all CLIP models share.

Text is cleaned (``cleaning.clean_text``: ftfy's fixes for well-formed text, HTML unescaping,
whitespace collapsed, lowercase), split into words (`split_words`), and each word's UTF-8
bytes, spelt in a printable 256-character alphabet (`byte_alphabet`), are merged pair by pair
in the order of the 48,894 merges in ``bpe_simple_vocab_16e6.txt.gz`` (shipped with this
package; see the LICENSE note beside it). The last symbol of a word carries ``</w>``.

Token ids: 0-255 the single byte symbols, 256-511 the same ending a word (``x</w>``), 512 + r
the result of merge r (its line r + 1 in the file), 49406 ``<start_of_text>``, 49407
``<end_of_text>``. So "a" is 256 + 64 = 320 (``a`` is the 65th symbol of the alphabet, which
starts at ``!``), and "a photo of a cat" is [49406, 320, 1125, 539, 320, 2368, 49407], the ids
published with CLIP; tests/test_clip_models.py derives them from the vocabulary file.

A batch of texts becomes a [N, context_length] tensor: start, the text's ids, end, zero
padding; a text too long is cut so that the end token is still the last one, as open_clip
does (the text tower pools at the end token, the row's largest id).
"""

from __future__ import annotations

import functools
import gzip
import unicodedata
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import torch

from smoothinv.errors import SmoothInvError, param
from smoothinv.models.clip.cleaning import clean_text

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
START = "<start_of_text>"
END = "<end_of_text>"
MERGES = 49152 - 256 - 2
"""Merges CLIP uses: the first 48,894 lines after the file's version line."""
CONTEXT_LENGTH = 77
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
_CACHE_LIMIT = 100_000


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Byte -> a printable character standing for it: the printable Latin-1 bytes stand for
    themselves (``!``-``~``, ``¡``-``¬``, ``®``-``ÿ``), the other 68 bytes for U+0100 onwards in
    byte order. Insertion order is the vocabulary's order of single-byte symbols."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(256 + extra)
            extra += 1
    return alphabet


def _is_letter(char: str) -> bool:
    return unicodedata.category(char).startswith("L")


def _is_number(char: str) -> bool:
    return unicodedata.category(char).startswith("N")


def _starts_with(text: str, word: str, start: int) -> bool:
    """Whether `word` occurs at `start`, ignoring case as CLIP's pattern does (its IGNORECASE
    flag: after lowercasing, only "ſ", which folds to "s", still differs)."""
    part = text[start:start + len(word)]
    return len(part) == len(word) and all(a == b or a.casefold() == b for a, b in zip(part, word))


def split_words(text: str) -> list[str]:
    """CLIP's word split of cleaned text, the pattern
    ``<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``
    scanned left to right: the special tokens, an apostrophe with a contraction, a run of
    letters, one digit, or a run of other non-space characters; whitespace separates."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        special = next((s for s in (START, END) if _starts_with(text, s, i)), None)
        if special is not None:
            words.append(text[i:i + len(special)])
            i += len(special)
            continue
        if char == "'":
            suffix = next((s for s in _CONTRACTIONS if _starts_with(text, s, i + 1)), None)
            if suffix is not None:
                words.append(text[i:i + 1 + len(suffix)])
                i += 1 + len(suffix)
                continue
        if _is_number(char):
            words.append(char)
            i += 1
            continue
        j = i + 1
        if _is_letter(char):
            while j < n and _is_letter(text[j]):
                j += 1
        else:
            while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        words.append(text[i:j])
        i = j
    return words


class ClipTokenizer:
    """Text <-> CLIP token ids. ``merges`` are the BPE merges in priority order."""

    def __init__(self, merges: Sequence[tuple[str, str]], context_length: int = CONTEXT_LENGTH) -> None:
        alphabet = list(byte_alphabet().values())
        vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.decoder = vocab
        self.ranks = {tuple(m): rank for rank, m in enumerate(merges)}
        self.start_id = self.encoder[START]
        self.end_id = self.encoder[END]
        self.context_length = context_length
        self._byte_of = {char: byte for byte, char in byte_alphabet().items()}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
        """A tokenizer from a gzipped merges file such as ``bpe_simple_vocab_16e6.txt.gz``."""
        try:
            lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise SmoothInvError(f"cannot read the CLIP vocabulary {path}: {exc}") from None
        merges = [tuple(line.split()) for line in lines[1:MERGES + 1]]
        if len(merges) != MERGES or any(len(m) != 2 for m in merges):
            raise SmoothInvError(f"{path} is not CLIP's BPE vocabulary: expected {MERGES} merge lines of two symbols")
        return cls(merges, context_length)  # type: ignore[arg-type]

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def encode(self, text: str) -> list[int]:
        """The ids of cleaned `text`, without the start and end tokens."""
        ids: list[int] = []
        for word in split_words(clean_text(text)):
            if word in (START, END):  # as typed: CLIP reads them as the special tokens
                ids.append(self.encoder[word])
            else:
                ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: each word followed by a space (words are not told apart from punctuation
        otherwise), special tokens as their names, invalid UTF-8 as U+FFFD."""
        symbols = []
        for token in ids:
            token = int(token)
            if not 0 <= token < self.vocab_size:
                raise SmoothInvError(f"token id {token} is outside CLIP's vocabulary [0, {self.vocab_size})")
            symbols.append(self.decoder[token])
        data = bytes(self._byte_of[c] for c in "".join(symbols))
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids [N, context_length] (int64): start, ids, end, zeros; cut to keep the end token."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = self.context_length if context_length is None else context_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise SmoothInvError(f"{param('context_length')} must be an integer >= 2, got {length!r}")
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise SmoothInvError(f"{param('texts')} must be strings, got {type(text).__name__}")
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > length:
                ids = ids[: length - 1] + [self.end_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def _word_ids(self, word: str) -> list[int]:
        """BPE of one word: its byte symbols, ``</w>`` on the last, merged by rank until none applies."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        alphabet = byte_alphabet()
        symbols = [alphabet[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pairs = list(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, MERGES))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.encoder[s] for s in symbols]
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[word] = ids
        return ids


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> ClipTokenizer:
    """The tokenizer of every OpenAI and open_clip CLIP model, from the vocabulary shipped here."""
    with resources.as_file(resources.files(__package__) / VOCAB_FILE) as path:
        return ClipTokenizer.from_file(path)
