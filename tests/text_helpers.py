"""A toy parallel corpus written to real text files: learnable by a tiny model in seconds."""

from __future__ import annotations

import random
from pathlib import Path

# A toy language pair with a word-for-word dictionary: learnable by a tiny model in seconds.
DICTIONARY = {
    "the": "le", "cat": "chat", "dog": "chien", "house": "maison", "red": "rouge",
    "big": "grand", "small": "petit", "eats": "mange", "sees": "voit", "green": "vert",
    "blue": "bleu", "old": "vieux", "young": "jeune", "man": "homme", "woman": "femme",
    "car": "voiture", "tree": "arbre", "runs": "court", "sleeps": "dort", "happy": "heureux",
    "bread": "pain", "water": "eau", "drinks": "boit", "sun": "soleil",
}  # fmt: skip
# Training pairs every filter must drop (with SETTINGS): an empty side, a side over max_len
# pieces, a piece-count ratio far over max_ratio.
BAD_PAIRS = [("", "le chat"), ("the cat " * 40, "le chat " * 40), ("cat", "chien " * 12)]


def translate_words(sentence: str) -> str:
    return " ".join(DICTIONARY[word] for word in sentence.split())


def write_corpus(
    directory: Path, n_train: int = 600, n_eval: int = 60, seed: int = 0
) -> dict[str, tuple[Path, Path]]:
    """Aligned en/fr files for train (with BAD_PAIRS at the start), valid and test."""
    rng = random.Random(seed)
    files = {}
    for split, count in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        english = [
            " ".join(rng.choices(list(DICTIONARY), k=rng.randint(3, 8))) for _ in range(count)
        ]
        pairs = [(s, translate_words(s)) for s in english]
        if split == "train":
            pairs = BAD_PAIRS + pairs
        files[split] = (directory / f"{split}.en", directory / f"{split}.fr")
        for side, path in enumerate(files[split]):
            path.write_text("".join(pair[side] + "\n" for pair in pairs), encoding="utf-8")
    return files
