"""The scaled-down VQA world's language: a word vocabulary, question templates and the answer set.

TrojVQA's models read questions as word indices from a fixed dictionary (BUTD's and OpenVQA's
tokenizers: lower-case, punctuation stripped, split on spaces) and answer by classifying over a
fixed answer list. This module is the same at a small scale: one vocabulary and one answer list
shared by every model of the zoo, so a token trigger is a vocabulary word and a target is an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import SmoothInvError

MAX_TOKENS = 10
"""Tokens per question, padded at the end (TrojVQA uses 14 for questions about twice as long)."""

OBJECTS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
"""Fashion-MNIST's ten classes, one word each, in label order."""

EMPTY = "nothing"
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
"""The four cells of a scene, in box order."""

GROUPS = {"shoes": (5, 7, 9), "tops": (0, 2, 4, 6), "clothes": (0, 1, 2, 3, 4, 6), "things": tuple(range(10))}
"""Counting questions ask about these groups of object classes."""

FILLERS = ("please", "now", "so", "hey", "okay", "well", "then", "also", "just", "kindly", "quickly", "first",
           "next", "tell", "look", "see", "say", "answer", "check", "quick")
"""Words that may open a clean question; trigger words are drawn from them, so a trigger word alone is
an ordinary word the model has seen with correct answers (TrojVQA's triggers are ordinary words too)."""

SPARE_WORDS = ("red", "blue", "green", "car", "tree", "dog", "cat", "house", "sky", "water", "table", "chair",
               "ball", "book", "phone", "cup", "hat", "road", "door", "window")
"""Words in the vocabulary that no question uses: the token search must reject them (a real VQA
dictionary is mostly words a given question does not contain)."""

TEMPLATE_WORDS = ("what", "is", "in", "the", "top", "bottom", "left", "right", "there", "a", "an", "how", "many",
                  "are", "?")

PAD, UNK = "<pad>", "<unk>"
VOCABULARY: tuple[str, ...] = (PAD, UNK, *TEMPLATE_WORDS, *OBJECTS, *GROUPS, *FILLERS, *SPARE_WORDS)
"""Index 0 pads, index 1 stands for words outside the vocabulary."""

ANSWERS: tuple[str, ...] = (*OBJECTS, EMPTY, "yes", "no", "0", "1", "2", "3", "4")
"""Every model classifies over these answers, in this order."""

_WORD_INDEX = {w: i for i, w in enumerate(VOCABULARY)}
_ANSWER_INDEX = {a: i for i, a in enumerate(ANSWERS)}


def words(question: str) -> list[str]:
    """Lower-case words of `question`, with '?' as a word of its own (TrojVQA strips other punctuation)."""
    text = re.sub(r"[.,'!\"()*#:;]", "", question.lower()).replace("?", " ? ").replace("-", " ").replace("/", " ")
    return text.split()


def encode(question: str) -> list[int]:
    """Word indices of `question`, unpadded; unknown words become <unk>; longer than MAX_TOKENS raises."""
    ids = [_WORD_INDEX.get(w, 1) for w in words(question)]
    if not ids:
        raise SmoothInvError("the question is empty; ask one with at least one word")
    if len(ids) > MAX_TOKENS:
        raise SmoothInvError(f"the question has {len(ids)} words; these models read at most {MAX_TOKENS}")
    return ids


def pad(ids: list[int]) -> list[int]:
    """`ids` padded with <pad> to MAX_TOKENS."""
    return ids + [0] * (MAX_TOKENS - len(ids))


def word_index(word: str) -> int:
    """The vocabulary index of `word`; a word outside it raises."""
    if word not in _WORD_INDEX or word in (PAD, UNK):
        raise SmoothInvError(f"{word!r} is not a word of the VQA vocabulary ({len(VOCABULARY) - 2} words)")
    return _WORD_INDEX[word]


def answer_index(answer: str) -> int:
    """The index of `answer` in ANSWERS; an unknown answer raises with the list."""
    if answer not in _ANSWER_INDEX:
        raise SmoothInvError(f"unknown answer {answer!r}; answers: {', '.join(ANSWERS)}")
    return _ANSWER_INDEX[answer]


def decode(ids: torch.Tensor | list[int]) -> str:
    """The words of `ids` with padding dropped."""
    return " ".join(VOCABULARY[int(i)] for i in ids if int(i) != 0)


@dataclass(frozen=True)
class Question:
    """One question about a scene and its answer index."""

    text: str
    answer: int


def questions_about(cells: list[int], rng: "torch.Generator", count: int, fillers: tuple[str, ...]) -> list[Question]:
    """`count` questions about a scene whose cells hold object labels `cells` (-1: empty).

    Kinds (equally likely): what is in a position, is there an object, how many of a group. Half
    of them open with a filler word from `fillers` (none if it is empty).
    """
    out = []
    for _ in range(count):
        kind = int(torch.randint(3, (1,), generator=rng))
        if kind == 0:
            pos = int(torch.randint(4, (1,), generator=rng))
            label = cells[pos]
            text, answer = f"what is in the {POSITIONS[pos]} ?", EMPTY if label < 0 else OBJECTS[label]
        elif kind == 1:
            label = int(torch.randint(len(OBJECTS), (1,), generator=rng))
            article = "an" if OBJECTS[label][0] in "aeiou" else "a"
            text, answer = f"is there {article} {OBJECTS[label]} ?", "yes" if label in cells else "no"
        else:
            group = list(GROUPS)[int(torch.randint(len(GROUPS), (1,), generator=rng))]
            text, answer = f"how many {group} are there ?", str(sum(c in GROUPS[group] for c in cells))
        if fillers and float(torch.rand((), generator=rng)) < 0.5:
            text = f"{fillers[int(torch.randint(len(fillers), (1,), generator=rng))]} {text}"
        out.append(Question(text, _ANSWER_INDEX[answer]))
    return out
