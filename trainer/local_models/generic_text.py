"""Text that is not the arithmetic task, generated from small built-in word lists.

Two uses: the tokenizer is trained on it beside the task text, so that inputs unlike the task still split into
sensible pieces; and the out-of-distribution set (`ood.jsonl`) is drawn from it, so that uncertainty-aware reward
models can be tested on inputs they were never trained on. Everything is seeded by the caller's `random.Random`;
nothing is read from the machine, so the text is the same everywhere.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable

NOUNS = (
    "cat dog bird horse river mountain city village garden kitchen table window book letter teacher student "
    "doctor farmer market train ship road bridge forest island ocean cloud storm summer winter morning evening "
    "music song painting museum library computer program network server database garden apple bread cheese "
    "coffee tea soup rice orange lemon tomato onion castle king queen soldier history science planet star moon "
    "sun engine wheel machine robot camera phone street house door key friend family child game team ball"
).split()
VERBS = (
    "sees finds builds opens closes carries paints writes reads sings follows crosses watches cooks visits "
    "repairs sells buys draws remembers explains moves holds leaves answers changes climbs"
).split()
ADJECTIVES = (
    "old young small large quiet loud bright dark green red blue yellow happy tired warm cold ancient modern "
    "strange simple heavy light slow fast gentle busy empty famous"
).split()
PLACES = (
    "in the park|near the river|at the station|on the hill|under the bridge|in the old town|by the sea|"
    "inside the museum|behind the house|across the valley"
).split("|")
# Short facts for questions on other topics, with their one-sentence answers.
FACTS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("Which animal says meow?", "A cat says meow."),
    ("What do bees make?", "Bees make honey."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("Who wrote Hamlet?", "Hamlet was written by Shakespeare."),
    ("What is the largest ocean?", "The Pacific is the largest ocean."),
    ("Which planet is called the red planet?", "Mars is called the red planet."),
    ("What language is spoken in Brazil?", "Portuguese is spoken in Brazil."),
    ("What is the boiling point of water?", "Water boils at one hundred degrees Celsius."),
)
FOREIGN = (
    "Bonjour, comment allez-vous aujourd'hui ?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "¿Dónde está la estación de tren?",
    "Il pleut très fort ce soir à Paris.",
    "Ich möchte einen Kaffee, bitte.",
    "今日はいい天気ですね。",
    "Привет, как дела?",
    "Η θάλασσα είναι ήσυχη σήμερα.",
)
SYMBOLS = string.punctuation + "§¶©®°±µ×÷←→↑↓∑∞≈≠≤≥★☆♠♣♥♦■□▲△●○"


def sentence(rng: random.Random) -> str:
    subject = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return f"{subject} {rng.choice(VERBS)} the {rng.choice(NOUNS)} {rng.choice(PLACES)}."


def paragraph(rng: random.Random, sentences: int = 3) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def random_words(rng: random.Random, count: int = 8) -> str:
    return " ".join(rng.choice(NOUNS + VERBS + ADJECTIVES) for _ in range(count))


def symbol_noise(rng: random.Random, length: int = 24) -> str:
    return "".join(rng.choice(SYMBOLS) for _ in range(length))


def json_record(rng: random.Random) -> str:
    record = {"name": rng.choice(NOUNS), "color": rng.choice(ADJECTIVES), "count": rng.randrange(1000)}
    return json.dumps(record)


def code_snippet(rng: random.Random) -> str:
    name, other, attribute = rng.choice(NOUNS), rng.choice(NOUNS), rng.choice(ADJECTIVES)
    body = f"    return [{other}.{attribute} for _ in range({rng.randrange(10)})]"
    return f"def {rng.choice(VERBS)}_{name}({other}):\n{body}"


def markdown_list(rng: random.Random) -> str:
    return "\n".join(f"- {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}" for _ in range(rng.randrange(2, 5)))


def fact(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FACTS)


def foreign(rng: random.Random) -> str:
    return rng.choice(FOREIGN)


# Generators of free text for the tokenizer's training corpus.
TEXT_KINDS: tuple[Callable[[random.Random], str], ...] = (
    paragraph,
    random_words,
    symbol_noise,
    json_record,
    code_snippet,
    markdown_list,
    foreign,
    lambda rng: " ".join(fact(rng)),
)


def generic_corpus(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(TEXT_KINDS)(rng) for _ in range(count)]
