"""Vocabularies and message pools of the synthetic world, built deterministically from a seed.

Topic words are pronounceable pseudo-words so that no topic leaks into another; chatter,
provocation and link-spam pools are shared by everyone (normal users use them too, just less).
"""

from __future__ import annotations

import numpy as np

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr", "st", "tr", "sh", "ch"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ee"]
_CODAS = ["", "", "n", "r", "k", "s", "x", "m", "th"]

STOPWORDS = ["the", "is", "this", "go", "we", "so", "just", "now", "that", "it", "on", "for"]
CHATTER = [
    "hi all",
    "hello chat",
    "lol",
    "gg",
    "nice",
    "wow",
    "good luck",
    "brb",
    "back",
    "yes",
    "no way",
    "same",
    "hype",
    "let's go",
    "true",
    "haha",
    "gl hf",
    "ok",
    "wait what",
    "omg",
    "welcome",
    "good morning",
    "good night",
    "thanks",
    "so good",
    "first time here",
]
PROVOCATION = [
    "this is trash",
    "worst stream ever",
    "mods are clowns",
    "cry more",
    "you all suck",
    "nobody cares",
    "stop playing like a bot",
    "uninstall",
    "what a joke",
    "shut up",
    "go back to school",
    "lmao losers",
    "ratio",
    "cope",
    "this chat is dead",
    "so bad it hurts",
]
LINK_SPAM = [
    "free coins at bit.ly/{}",
    "check my profile for {}",
    "win skins at {}.gg",
    "follow me {} for follow back",
    "cheap boost {}.shop",
    "giveaway at {}.io",
]
PET_PHRASES = [
    "lol",
    "xd",
    "ngl",
    "fr",
    "tbh",
    ":)",
    ":D",
    "<3",
    "kek",
    "pog",
    "lul",
    "smh",
    "imo",
    "!!",
    "...",
    "^^",
    "xo",
    "yo",
    "bro",
    "fam",
    "lmao",
    "rip",
    "ez",
    "af",
    "irl",
    "jk",
    "kappa",
    "omegalul",
    "5head",
    "monka",
    "poggers",
    "sadge",
    "copium",
    "ayaya",
    "d:",
    "o7",
]
PLAYS_COMMANDS = ["up", "down", "left", "right", "a", "b"]
PLAYS_START = "start"
PLAYS_VOTES = ["anarchy", "democracy"]

NAME_STEMS = [
    "alex",
    "sam",
    "nova",
    "kai",
    "luna",
    "max",
    "zoe",
    "leo",
    "mia",
    "finn",
    "ash",
    "ivy",
    "rex",
    "sky",
    "jade",
    "neo",
    "remy",
    "rin",
    "toby",
    "ezra",
    "milo",
    "noor",
    "ola",
    "pax",
    "dark",
    "shadow",
    "pixel",
    "ninja",
    "frost",
    "blaze",
    "storm",
    "wolf",
    "fox",
    "raven",
    "ghost",
    "lucky",
    "happy",
    "crazy",
    "silent",
    "cosmic",
    "mystic",
    "turbo",
    "neon",
    "retro",
]
NAME_NOUNS = [
    "gamer",
    "cat",
    "dragon",
    "knight",
    "rider",
    "panda",
    "wizard",
    "hunter",
    "pilot",
    "bear",
    "tiger",
    "coder",
    "chef",
    "star",
    "moon",
    "byte",
    "blade",
    "hawk",
    "otter",
    "penguin",
]


def pseudo_word(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(1, 3)) + 1
    return "".join(
        _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] + _CODAS[rng.integers(len(_CODAS))]
        for _ in range(syllables)
    )


def topic_vocabularies(rng: np.random.Generator, topics: int, words: int = 10) -> list[list[str]]:
    """``topics`` disjoint word lists."""
    seen: set[str] = set()
    vocabularies = []
    for _ in range(topics):
        vocab: list[str] = []
        while len(vocab) < words:
            word = pseudo_word(rng)
            if word not in seen:
                seen.add(word)
                vocab.append(word)
        vocabularies.append(vocab)
    return vocabularies


def topic_messages(rng: np.random.Generator, vocab: list[str], count: int) -> list[str]:
    """Short messages about one topic: 2-6 topic words with the odd stopword."""
    messages = []
    for _ in range(count):
        length = int(rng.integers(2, 7))
        words = [
            STOPWORDS[rng.integers(len(STOPWORDS))] if rng.random() < 0.2 else vocab[rng.integers(len(vocab))]
            for _ in range(length)
        ]
        messages.append(" ".join(words))
    return messages


def link_spam(rng: np.random.Generator, count: int) -> list[str]:
    return [LINK_SPAM[rng.integers(len(LINK_SPAM))].format(pseudo_word(rng)) for _ in range(count)]


def username(rng: np.random.Generator) -> str:
    """A username from shared stems: unrelated users often look alike, as on real platforms."""
    stem = NAME_STEMS[rng.integers(len(NAME_STEMS))]
    style = rng.integers(5)
    if style == 0:
        return f"{stem}{rng.integers(1, 9999)}"
    if style == 1:
        return f"{stem}_{NAME_NOUNS[rng.integers(len(NAME_NOUNS))]}"
    if style == 2:
        return f"{NAME_NOUNS[rng.integers(len(NAME_NOUNS))]}{stem}{rng.integers(10, 99)}"
    if style == 3:
        return f"x{stem}x{rng.integers(0, 99)}"
    return f"the_{stem}_{NAME_NOUNS[rng.integers(len(NAME_NOUNS))]}"


_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5"})


def evasion_username(rng: np.random.Generator, parent: str) -> str:
    """A banned user's new name: the old one with a small, typical mutation."""
    kind = rng.integers(6)
    if kind == 0:
        return f"{parent}{rng.integers(1, 99)}"
    if kind == 1:
        return f"{parent}_{['alt', 'back', 'v2', 'real', 'new', 'again'][rng.integers(6)]}"
    if kind == 2:
        return parent.translate(_LEET)
    if kind == 3:
        return f"x{parent}x"
    if kind == 4 and len(parent) > 4:
        cut = int(rng.integers(1, len(parent) - 1))
        return parent[:cut] + parent[cut + 1 :] + str(rng.integers(0, 9))
    return f"{parent[::-1][:3]}{parent}" if rng.random() < 0.3 else f"not{parent}"
