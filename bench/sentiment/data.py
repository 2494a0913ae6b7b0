"""The labelled data sets and the one split that training and evaluation share."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

SEED = 20250101
TEST_SIZE = 0.2
FILES = {"en": "en_airline_tweets.csv", "zh": "zh_waimai_reviews.csv"}


@dataclass(frozen=True, slots=True)
class Split:
    language: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]


def load(data_dir: Path, language: str) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    labels: list[str] = []
    with (data_dir / FILES[language]).open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels


def split(data_dir: Path, language: str) -> Split:
    """80/20, stratified by label, fixed seed: the held-out 20% is never trained or tuned on."""
    texts, labels = load(data_dir, language)
    train_x, test_x, train_y, test_y = train_test_split(
        texts, labels, test_size=TEST_SIZE, stratify=labels, random_state=SEED
    )
    return Split(language, list(train_x), list(train_y), list(test_x), list(test_y))
