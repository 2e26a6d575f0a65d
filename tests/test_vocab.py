"""Vocabulary training, special ids and the alexatm-vocab CLI."""

import os

import pytest
import sentencepiece as spm
from data_fixtures import vocab_path, write_corpus

from alexatm_jax.cli import vocab as vocab_cli
from tasks import demo_files, vocab_training
from tasks.vocabularies import SpecialIds, read_special_ids, reserved_tag_piece, vocabulary_path


def test_special_ids_and_reserved_pieces():
    path = vocab_path()
    ids = read_special_ids(path)
    assert ids == SpecialIds(pad=0, eos=1, unk=2, clm=3, doc=4, vocab_size=600, space=ids.space)
    assert not ids.release_template and ids.space is not None
    sp = spm.SentencePieceProcessor(model_file=path)
    assert sp.bos_id() == -1
    assert [sp.piece_to_id(reserved_tag_piece(i)) for i in range(4)] == [5, 6, 7, 8]
    assert sp.id_to_piece(sp.piece_to_id(reserved_tag_piece(4))) != reserved_tag_piece(4)
    assert sum(sp.is_byte(i) for i in range(sp.get_piece_size())) == 256


def test_byte_fallback_and_user_pieces():
    sp = spm.SentencePieceProcessor(model_file=vocab_path())
    ids = sp.encode("🦒 kalo [CLM] mi [DOC]")
    assert 2 not in ids  # no unk: the unseen character falls back to bytes
    assert any(sp.is_byte(i) for i in ids)
    assert 3 in ids and 4 in ids
    assert sp.decode(ids).startswith("🦒")


def test_missing_clm_piece_is_a_clear_error(tmp_path):
    prefix = str(tmp_path / "plain")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world", "the quick brown fox", "jumps over"] * 50),
        model_prefix=prefix,
        vocab_size=28,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match=r"no \[CLM\] piece.*alexatm-vocab train"):
        read_special_ids(prefix + ".model")


def test_vocab_size_too_small_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no room for learned pieces"):
        vocab_training.train_vocabulary(["a b c"], str(tmp_path / "v.model"), 300, 100)


def test_cli_train_and_info(tmp_path, capsys):
    data_dir = write_corpus(str(tmp_path / "corpus"), languages=("en", "de"), documents=40)
    out = str(tmp_path / "v.model")
    vocab_cli.main(
        [
            "train",
            "--data_dir",
            data_dir,
            "--vocab_size",
            "400",
            "--out",
            out,
            "--num_reserved_tags",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "[CLM]=3 [DOC]=4" in printed
    assert os.path.exists(out) and os.path.exists(str(tmp_path / "v.vocab"))
    vocab_cli.main(["info", out])
    assert "reserved tags: 2; byte-fallback pieces: 256" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--data_dir", "/nonexistent", "--vocab_size", "500", "--out", "x.model"],
            "is not a directory",
        ),
        (
            ["train", "--data_dir", ".", "--vocab_size", "500", "--out", "x.bin"],
            "must end with .model",
        ),
        (["train", "--data_dir", ".", "--vocab_size", "10", "--out", "x.model"], "at least 300"),
        (["train", "--data_dir", "."], "train needs --vocab_size, --out (or --demo)"),
        (["train", "--demo", "--out", "x.model"], "--demo takes no --out"),
    ],
)
def test_cli_validates_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vocab_cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def small_demo(tmp_path, monkeypatch):
    """A demo corpus and settings small enough to train in a second, and an empty vocab dir."""
    monkeypatch.delenv("ALEXATM_VOCAB", raising=False)
    data_dir = write_corpus(str(tmp_path / "sample"), languages=("en", "de"), documents=40)
    monkeypatch.setattr(demo_files, "DEMO_DATA_DIR", data_dir)
    monkeypatch.setattr(demo_files, "DEMO_VOCAB_DIR", str(tmp_path / "vocab"))
    monkeypatch.setattr(demo_files, "DEMO_VOCAB_SIZE", 400)
    monkeypatch.setattr(demo_files, "DEMO_RESERVED_TAGS", 2)
    return tmp_path / "vocab"


def test_vocabulary_path_takes_the_argument_then_the_environment(small_demo, monkeypatch):
    assert vocabulary_path("/models/a.model") == "/models/a.model"
    monkeypatch.setenv("ALEXATM_VOCAB", "/models/b.model")
    assert vocabulary_path() == "/models/b.model"
    assert vocabulary_path("/models/a.model") == "/models/a.model"


def test_asking_for_a_vocabulary_never_trains_one(small_demo):
    with pytest.raises(FileNotFoundError, match=r"alexatm-vocab train --demo"):
        vocabulary_path()
    assert not small_demo.exists()


def test_the_demo_vocabulary_is_trained_on_request_then_found(small_demo, capsys):
    assert vocab_cli.main(["train", "--demo"]) == 0
    [path] = [str(p) for p in small_demo.glob("demo_400_*.model")]
    assert f"demo vocabulary: {path}" in capsys.readouterr().out
    assert vocabulary_path() == path == vocab_training.train_demo_vocabulary()
    assert read_special_ids(path).vocab_size == 400


def test_release_style_tokenizer_ids_are_read_not_assumed(tmp_path):
    """A model laid out like the released one (unk=0, bos=1, eos=2, no pad id, [PAD] piece)."""
    import tasks
    from tasks.inspection import collect_examples

    data_dir = write_corpus(str(tmp_path / "corpus"), languages=("en",), documents=30)
    prefix = str(tmp_path / "release")
    spm.SentencePieceTrainer.train(
        sentence_iterator=vocab_training.corpus_sentences(data_dir),
        model_prefix=prefix, vocab_size=300, pad_id=-1, unk_id=0, bos_id=1, eos_id=2,
        user_defined_symbols=["[PAD]", "[MASK]", "[CLM]", "[DOC]"], minloglevel=2,
    )  # fmt: skip
    ids = read_special_ids(prefix + ".model")
    assert (ids.pad, ids.eos, ids.unk, ids.clm, ids.doc) == (3, 2, 0, 5, 6)
    ds = tasks.get_dataset(
        "alexatm_local_en_clm", sequence_length={"inputs": 64, "targets": 64},
        data_dir=data_dir, vocab_path=prefix + ".model", feature_converter=False,
    )  # fmt: skip
    for record in collect_examples(ds, 20):
        # The released tokenizer's template: `<s> ▁ [CLM] ... </s>`, targets `<s> ... </s>`.
        assert record.inputs[:3] == [1, ids.space, 5] and record.targets[0] == 1
        assert record.inputs[-1] == 2 and record.targets[-1] == 2
