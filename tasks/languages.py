"""The 12 AlexaTM pretraining languages, their sizes, and the sampling rates q_i ∝ p_i^alpha."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping

# ISO 639-1 code -> English name, in the order the paper lists them.
LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "en": "English",
    "fr": "French",
    "de": "German",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "mr": "Marathi",
    "pt": "Portuguese",
    "es": "Spanish",
    "ta": "Tamil",
    "te": "Telugu",
}

DEFAULT_COUNTS_PATH = os.path.join(os.path.dirname(__file__), "language_counts.json")


@dataclasses.dataclass(frozen=True)
class LanguageSize:
    """Size of one language's data, in any one unit (the default file uses billions of tokens)."""

    mc4: float
    wikipedia: float

    @property
    def total(self) -> float:
        """mC4 plus natural (not upsampled) Wikipedia size, in the file's unit."""
        return self.mc4 + self.wikipedia


def check_language(code: str) -> str:
    """Returns `code` if it is one of the 12 languages, else raises a ValueError naming them."""
    if code not in LANGUAGES:
        raise ValueError(
            f"unknown language code {code!r}; AlexaTM uses {', '.join(sorted(LANGUAGES))}. "
            "Rename the directory/argument to one of these codes or leave it out."
        )
    return code


def load_language_sizes(path: str | None = None) -> dict[str, LanguageSize]:
    """Reads per-language sizes from a JSON counts file (default: tasks/language_counts.json).

    The file holds {"languages": {code: {"mc4": x, "wikipedia": y}}}; every one of the 12 codes
    must appear, with non-negative sizes.
    """
    path = path or DEFAULT_COUNTS_PATH
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)["languages"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"cannot read language counts from {path}: {e}. Expected JSON like "
            '{"languages": {"en": {"mc4": 2733, "wikipedia": 4.0}, ...}}'
        ) from e
    sizes = {}
    for code, entry in table.items():
        check_language(code)
        size = LanguageSize(mc4=float(entry["mc4"]), wikipedia=float(entry["wikipedia"]))
        if size.mc4 < 0 or size.wikipedia < 0 or not math.isfinite(size.total):
            raise ValueError(f"{path}: negative or non-finite size for {code!r}: {entry}")
        sizes[code] = size
    missing = sorted(set(LANGUAGES) - set(sizes))
    if missing:
        raise ValueError(f"{path}: no sizes for languages {missing}")
    return sizes


def sampling_rates(sizes: Mapping[str, float], alpha: float = 0.5) -> dict[str, float]:
    """Language sampling probabilities q_i = p_i^alpha / sum_j p_j^alpha, with p_i = size_i / sum.

    Returns probabilities that sum to 1 over the keys of `sizes`.
    """
    total = sum(sizes.values())
    if not sizes or total <= 0:
        raise ValueError(f"language sizes must have a positive sum, got {dict(sizes)}")
    weights = {code: (size / total) ** alpha for code, size in sizes.items()}
    norm = sum(weights.values())
    return {code: w / norm for code, w in weights.items()}


def wikipedia_shares(
    sizes: Mapping[str, LanguageSize], upsampling: float = 10.0
) -> dict[str, float]:
    """Share of each language's examples drawn from Wikipedia when it is upsampled `upsampling`x.

    share_i = u * wiki_i / (u * wiki_i + mc4_i); the rest of the language's examples come from mC4.
    """
    shares = {}
    for code, size in sizes.items():
        wiki = upsampling * size.wikipedia
        shares[code] = wiki / (wiki + size.mc4) if wiki + size.mc4 > 0 else 0.0
    return shares
