"""Mixture registration and rates, the local mixture's directory handling, and TFDS wiring."""

import math
import os
import subprocess
import sys

import pytest
import seqio
import tensorflow_datasets as tfds
from data_fixtures import vocab_path, write_corpus

import tasks
from tasks import languages
from tasks.inspection import collect_examples


def _by(rates, part):
    return sum(rate for name, rate in rates.items() if part in name)


def test_square_root_language_sampling():
    q = languages.sampling_rates({"a": 1.0, "b": 4.0, "c": 0.0})
    assert q == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0})
    with pytest.raises(ValueError, match="positive sum"):
        languages.sampling_rates({"a": 0.0})


def test_pretrain_mixture_rates_follow_the_paper():
    tasks.register_pretrain_mixture(tasks.MixtureConfig())
    rates = tasks.mixture_rates(tasks.PRETRAIN_MIXTURE)
    assert len(rates) == 12 * 2 * 2
    assert _by(rates, "_clm") == pytest.approx(0.2)
    sizes = languages.load_language_sizes()
    q = languages.sampling_rates({code: size.total for code, size in sizes.items()})
    for code, size in sizes.items():
        assert _by(rates, f"_{code}_") == pytest.approx(q[code])
        wiki = 10 * size.wikipedia / (10 * size.wikipedia + size.mc4)
        assert _by(rates, f"alexatm_wiki_{code}_") == pytest.approx(q[code] * wiki)
    natural = {c: s.total / sum(x.total for x in sizes.values()) for c, s in sizes.items()}
    shares = languages.wikipedia_shares(sizes)
    assert 0.08 < sum(natural[c] * shares[c] for c in sizes) < 0.10  # paper: 9% Wikipedia


def test_local_mixture_leaves_out_missing_languages(tmp_path, caplog):
    data_dir = write_corpus(str(tmp_path), languages=("en", "hi"), documents=10)
    layout = tasks.register_local_mixture(data_dir, tasks.MixtureConfig(vocab_path=vocab_path()))
    assert sorted(layout.files) == ["en", "hi"]
    assert "left out" in caplog.text and "fr" in caplog.text
    rates = tasks.mixture_rates(tasks.LOCAL_MIXTURE)
    sizes = languages.load_language_sizes()
    q = languages.sampling_rates({c: sizes[c].total for c in ("en", "hi")})
    assert _by(rates, "_en_") == pytest.approx(q["en"]) and _by(rates, "_hi_") == pytest.approx(
        q["hi"]
    )
    assert set(rates) == {
        f"alexatm_local_{c}_{o}" for c in ("en", "hi") for o in ("denoise", "clm")
    }


def test_local_registration_is_idempotent_and_replaces(tmp_path):
    config = tasks.MixtureConfig(vocab_path=vocab_path())
    first = write_corpus(str(tmp_path / "a"), languages=("en", "fr"), documents=5)
    second = write_corpus(str(tmp_path / "b"), languages=("de",), documents=5)
    tasks.register_local_mixture(first, config)
    provider = seqio.get_mixture_or_task(tasks.LOCAL_MIXTURE)
    tasks.register_local_mixture(first, config)
    assert seqio.get_mixture_or_task(tasks.LOCAL_MIXTURE) is provider
    tasks.register_local_mixture(second, config)
    assert "alexatm_local_fr_clm" not in seqio.TaskRegistry.names()
    assert set(tasks.mixture_rates(tasks.LOCAL_MIXTURE)) == {
        "alexatm_local_de_denoise",
        "alexatm_local_de_clm",
    }


def test_empty_data_dir_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="DATA_DIR/<lang>"):
        tasks.register_local_mixture(str(tmp_path))
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        tasks.MixtureConfig(languages=("en", "xx"))


def test_tfds_mixture_wiring_with_mock_data():
    config = tasks.MixtureConfig(
        vocab_path=vocab_path(), languages=("ta",), document_shuffle_buffer=4
    )
    with tfds.testing.mock_data(num_examples=20):
        ds = tasks.get_dataset(
            tasks.PRETRAIN_MIXTURE,
            sequence_length={"inputs": 64, "targets": 64},
            config=config,
            feature_converter=False,
            seed=1,
        )
        records = collect_examples(ds, 300)
        validation = collect_examples(
            tasks.get_dataset(
                tasks.PRETRAIN_MIXTURE,
                sequence_length={"inputs": 64, "targets": 64},
                config=config,
                feature_converter=False,
                split="validation",
            ),
            50,
        )
    assert {r.source for r in records} == {"wiki", "mc4"}
    assert {r.language for r in records} == {"ta"}
    assert math.isclose(sum(r.objective == "clm" for r in records) / 300, 0.2)
    assert validation and {r.source for r in validation} <= {"wiki", "mc4"}


def test_importing_tasks_lists_no_directory_and_leaves_the_trainer_alone(repo_root):
    """`alexatm_pretrain` is registered on import; the local mixture waits until it is asked
    for, so importing `tasks` scans no DATA_DIR (checked in a fresh interpreter)."""
    code = """
import os, sys
listed = []
for name in ("listdir", "scandir"):
    real = getattr(os, name)
    setattr(os, name, lambda *a, _real=real: listed.append(str(a[0]) if a else ".") or _real(*a))
import seqio, tasks
print(sorted(n for n in seqio.MixtureRegistry.names() if n.startswith("alexatm")))
print([p for p in listed if "data" in p.split(os.sep)])
print(sorted(m for m in sys.modules if m.startswith("alexatm_jax")))
"""
    env = {**os.environ, "PYTHONPATH": str(repo_root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=repo_root,
        text=True,
        capture_output=True,
        check=True,
    )
    assert done.stdout.splitlines() == ["['alexatm_pretrain']", "[]", "[]"]
