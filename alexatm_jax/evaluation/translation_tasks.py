"""Translation tasks with the release's 1-shot prompts: Flores-101 between the 12 languages
(spBLEU) and WMT (sacrebleu BLEU with the standard 13a signature)."""

from __future__ import annotations

import pathlib

from alexatm_jax.evaluation import data, hf_files, metrics, sources
from alexatm_jax.evaluation.data import DataError
from alexatm_jax.evaluation.generation_tasks import GenerationItem, GenerationTask
from alexatm_jax.evaluation.text_processing import cut_before
from alexatm_jax.tokenization import clm_prompt

# ISO 639-1 code -> (name used in the prompt, Flores-101 code, Flores-200 code).
FLORES_LANGUAGES: dict[str, tuple[str, str, str]] = {
    "ar": ("Arabic", "ara", "arb_Arab"),
    "en": ("English", "eng", "eng_Latn"),
    "fr": ("French", "fra", "fra_Latn"),
    "de": ("German", "deu", "deu_Latn"),
    "hi": ("Hindi", "hin", "hin_Deva"),
    "it": ("Italian", "ita", "ita_Latn"),
    "ja": ("Japanese", "jpn", "jpn_Jpan"),
    "mr": ("Marathi", "mar", "mar_Deva"),
    "pt": ("Portuguese", "por", "por_Latn"),
    "es": ("Spanish", "spa", "spa_Latn"),
    "ta": ("Tamil", "tam", "tam_Taml"),
    "te": ("Telugu", "tel", "tel_Telu"),
}
WMT_LANGUAGES = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "ro": "Romanian",
    "cs": "Czech",
    "hi": "Hindi",
    "ru": "Russian",
    "fi": "Finnish",
    "tr": "Turkish",
}
FLORES_DIRECTORIES = ("flores101", "flores200", "flores")
FLORES_HUB = ("gsarti/flores_101", "facebook/flores", "openlanguagedata/flores_plus")


def flores_sentences(
    data_dir: str | pathlib.Path, split: str, language: str, limit: int | None = None
) -> list[str]:
    """One language's sentences of a Flores split (`dev` or `devtest`), line-aligned across
    languages, from the first of (under `DATA_DIR/flores101`, `flores200` or `flores`):

    `<split>/<lang>.jsonl` (field `sentence`); the official `<split>/<code>.<split>` text files;
    flores_plus's `<split>/<config>.parquet`; a HuggingFace dataset per language in `<config>/`
    (config `eng`, `eng_Latn` or `en`; field `sentence` or `text`), also in `DATA_DIR/<config>/`
    or the datasets cache (gsarti/flores_101, facebook/flores, flores_plus); one HuggingFace
    dataset of all languages in `all/` or the directory itself (columns `sentence_eng` or
    `sentence_eng_Latn`, as the `all` configs).
    """
    root = pathlib.Path(data_dir)
    _, code101, code200 = FLORES_LANGUAGES[language]
    tried = []
    for directory in FLORES_DIRECTORIES:
        folder = root / directory / split
        jsonl = folder / f"{language}.jsonl"
        if jsonl.is_file():
            return [data.field(e, "sentence") for e in data.read_jsonl(jsonl, ("sentence",), limit)]
        plain = folder / f"{code101}.{split}"
        if plain.is_file():
            lines = plain.read_text(encoding="utf-8").splitlines()
            return lines[:limit] if limit is not None else lines
        for code in (code200, code101):  # flores_plus on the Hub: <split>/<config>.parquet
            if (folder / f"{code}.parquet").is_file():
                rows = hf_files.read_parquet(folder / f"{code}.parquet")
                return _column(rows, f"{folder / code}.parquet", ("sentence", "text"), limit)
        tried += [str(jsonl), str(plain), f"{folder}/{code200}.parquet"]
    for config in (code101, code200, language):
        hf_dirs = [root / d / config for d in FLORES_DIRECTORIES] + [root / config]
        hf_dirs += hf_files.cache_directories(FLORES_HUB, config)
        for directory in hf_dirs:
            found = hf_files.read_split(directory, split) if directory.is_dir() else None
            if found is not None:
                return _column(*found, ("sentence", "text"), limit)
        tried.append(f"{root}/{{{','.join(FLORES_DIRECTORIES)}}}/{config}/ (HuggingFace files)")
    for directory in [root / d / sub for d in FLORES_DIRECTORIES for sub in ("all", "")]:
        found = hf_files.read_split(directory, split) if directory.is_dir() else None
        columns = (f"sentence_{code101}", f"sentence_{code200}")
        if found is not None and found[0] and any(c in found[0][0] for c in columns):
            return _column(*found, columns, limit)
    tried.append(
        f"a HuggingFace dataset of all languages (columns sentence_{code101} or "
        f"sentence_{code200}) in {root}/flores101/all/ or {root}/flores101/"
    )
    raise FileNotFoundError(
        f"no Flores {split} data for {language}: looked for "
        + "; ".join(tried)
        + f" and the datasets cache {hf_files.cache_root()}"
    )


def _column(rows: list[dict], where: str, names: tuple[str, ...], limit: int | None) -> list[str]:
    """The first of the columns `names` present, of the first `limit` rows (checked strings)."""
    if not rows:
        raise DataError(f"{where} holds no rows")
    key = next((n for n in names if n in rows[0]), None)
    if key is None:
        raise DataError(f"{where} has none of the columns {list(names)}")
    examples = [{**r, data.WHERE: f"{where} row {i}"} for i, r in enumerate(rows[:limit])]
    return [data.field(e, key) for e in examples]


class Translation(GenerationTask):
    """The release's 1-shot translation prompt: shots `Sentence:{gap}{src}; Translation in
    {Target}: {tgt}; `, prompt `[CLM] ` + shots + `Sentence:{gap}{src}; Translation in {Target}:`,
    output cut at the first `;`."""

    GAP = " "
    default_shots = 1

    def __init__(self, source: str, target: str, target_name: str):
        self.source, self.target, self.target_name = source, target, target_name

    def shot(self, source: str, translation: str) -> str:
        """One in-context example."""
        return f"Sentence:{self.GAP}{source}; Translation in {self.target_name}: {translation}; "

    def query(self, source: str) -> str:
        """The prompt's last part, for `source`."""
        return f"Sentence:{self.GAP}{source}; Translation in {self.target_name}:"

    def prompts(
        self,
        shot_pairs: list[tuple[str, str]],
        pairs: list[tuple[str, str]],
        shots: int,
        where: str,
    ) -> list[GenerationItem]:
        """Items from the shot and evaluation (source, target) pairs."""
        if len(shot_pairs) < shots:
            raise DataError(
                f"{where} has only {len(shot_pairs)} sentence pairs for shots; "
                f"{shots} shots were asked for"
            )
        prefix = "".join(self.shot(s, t) for s, t in shot_pairs[:shots])
        return [GenerationItem(clm_prompt(prefix + self.query(s)), (t,)) for s, t in pairs]

    def clean(self, output):
        return cut_before(output, ";")


class Flores(Translation):
    """Flores-101 between two of the 12 languages: shots the first dev sentences, evaluated on
    devtest (two spaces after `Sentence:`, as the release). Metrics: spBLEU and chrF."""

    GAP = "  "
    split = "devtest"

    def __init__(self, source: str, target: str):
        for code in (source, target):
            if code not in FLORES_LANGUAGES:
                raise ValueError(
                    f"unknown Flores language {code!r}; use two of {', '.join(FLORES_LANGUAGES)}"
                )
        if source == target:
            raise ValueError(f"flores101:{source}-{target} translates a language into itself")
        super().__init__(source, target, FLORES_LANGUAGES[target][0])
        self.name = f"flores101:{source}-{target}"

    def _pairs(self, data_dir: str, split: str, limit: int | None) -> list[tuple[str, str]]:
        sources_ = flores_sentences(data_dir, split, self.source, limit)
        targets = flores_sentences(data_dir, split, self.target, limit)
        if len(sources_) != len(targets):
            raise DataError(
                f"Flores {split} data of {self.source} and {self.target} have "
                f"{len(sources_)} and {len(targets)} sentences; they must align"
            )
        return list(zip(sources_, targets))

    def items(self, data_dir, split, tokenizer, shots, limit):
        shot_pairs = self._pairs(data_dir, "dev", shots) if shots else []
        return self.prompts(
            shot_pairs,
            self._pairs(data_dir, split, limit),
            shots,
            f"the Flores dev split of {self.source}-{self.target}",
        )

    def metrics(self, predictions, items):
        return metrics.translation_scores(
            predictions, [i.references for i in items], metrics.bleu_tokenizer()
        )


class WMT(Translation):
    """WMT news translation (`wmt14:fr-en`, `wmt16:de-en`, ...): shots the first pairs of the
    validation split, evaluated on test. Metrics: sacrebleu BLEU (13a, the standard signature)
    and chrF."""

    split = "test"
    YEARS = ("wmt14", "wmt16")

    def __init__(self, year: str, source: str, target: str):
        if year not in self.YEARS:
            raise ValueError(f"WMT tasks are {', '.join(self.YEARS)}, got {year!r}")
        for code in (source, target):
            if code not in WMT_LANGUAGES:
                raise ValueError(
                    f"unknown WMT language {code!r}; use two of {', '.join(WMT_LANGUAGES)}"
                )
        if "en" not in (source, target) or source == target:
            raise ValueError(f"WMT pairs are <xx>-en or en-<xx>, got {source}-{target}")
        super().__init__(source, target, WMT_LANGUAGES[target])
        self.year = year
        self.name = f"{year}:{source}-{target}"

    def _pairs(self, data_dir: str, split: str, limit: int | None) -> list[tuple[str, str]]:
        source = sources.wmt_source(self.year, self.source, self.target)
        examples = data.load_split(data_dir, source, split, ("source", "target"), limit)
        return [(data.field(e, "source"), data.field(e, "target")) for e in examples]

    def items(self, data_dir, split, tokenizer, shots, limit):
        shot_pairs = self._pairs(data_dir, "validation", shots) if shots else []
        return self.prompts(
            shot_pairs,
            self._pairs(data_dir, split, limit),
            shots,
            f"the {self.year} validation split of {self.source}-{self.target}",
        )

    def metrics(self, predictions, items):
        return metrics.translation_scores(
            predictions, [i.references for i in items], "13a", plain_name=True
        )


def translation_task(name: str) -> Translation | None:
    """`flores101:<src>-<tgt>` or `wmt14:<src>-<tgt>` / `wmt16:...`; None for other names."""
    prefix, _, pair = name.partition(":")
    if prefix not in ("flores101",) + WMT.YEARS or not pair:
        return None
    if pair.count("-") != 1:
        raise ValueError(
            f"write translation tasks as {prefix}:<src>-<tgt>, e.g. {prefix}:fr-en; got {name!r}"
        )
    source, target = pair.split("-")
    return Flores(source, target) if prefix == "flores101" else WMT(prefix, source, target)
