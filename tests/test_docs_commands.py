"""Every command the README and docs/ show still runs as written (at least its parser accepts
it), and every link between the pages resolves. The checker itself is tested on bad snippets."""

from pathlib import Path

import doc_commands
import pytest
from doc_commands import Invocation, extract, link_problems, problems

DOCS = doc_commands.doc_files()


@pytest.mark.parametrize(
    "doc",
    DOCS,
    ids=[d.name if d.parent.name != "tpu_scripts" else "tpu_scripts/README.md" for d in DOCS],
)
def test_commands_in_doc_run_as_written(doc: Path):
    found = [
        f"{inv.where}: {' '.join(inv.words)}\n    {problem}"
        for inv in extract(doc)
        for problem in problems(inv)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_in_doc_resolve(doc: Path):
    assert not link_problems(doc)


def test_docs_show_every_kind_of_command():
    programs = {inv.words[0] for doc in DOCS for inv in extract(doc)}
    assert set(doc_commands.console_scripts()) <= programs
    assert {"make", "python", "pytest", "tpu_scripts/launch.sh"} <= programs


@pytest.mark.parametrize("script", sorted(doc_commands.console_scripts()))
def test_every_console_script_prints_help(script: str):
    parser = doc_commands.parser_of(doc_commands.console_scripts()[script])
    assert doc_commands.help_problem(parser) is None


def _check(tmp_path: Path, snippet: str) -> list[tuple[Invocation, list[str]]]:
    doc = tmp_path / "doc.md"
    doc.write_text(snippet)
    return [(inv, problems(inv)) for inv in extract(doc, root=tmp_path)]


BAD = """\
Prose with `alexatm-info --verfy DIR` inline.

```bash
alexatm-train --gin_file=gin/experiments/smoke_cpu.gin --no_such_flag 3   # a flag
alexatm-frobnicate --help
time env X=1 alexatm-score --bogus
alexatm-vocab tran --demo
G=gin/experiments/missing.gin
alexatm-plan --gin_file $G --topology v5p-8
make demo && make no-such-target
python benchmarks/train_step.py --gin_file gin/models/small.gin \\
    --batchsize 8
python -m alexatm_jax.cli.nothing --help
pytest tests/test_no_such_file.py
tpu_scripts/launch.sh --name x --zone z --bogus_flag 1
alexatm-train --gin.MODEL_DIR="'/tmp/unterminated
```
"""

EXPECTED = [
    "alexatm-info has no option --verfy",
    "alexatm-train has no option --no_such_flag",
    "alexatm-frobnicate is not a console script",
    "alexatm-score has no option --bogus",
    "names none of the subcommands",
    "gin file 'gin/experiments/missing.gin'",
    "make no-such-target: no such target",
    "has no option --batchsize",
    "python -m alexatm_jax.cli.nothing: no such runnable module",
    "tests/test_no_such_file.py does not exist",
    "tpu_scripts/launch.sh --help lists no option --bogus_flag",
    "not a shell command line",
]


def test_checker_finds_every_bad_command(tmp_path: Path):
    checked = _check(tmp_path, BAD)
    assert [inv.where for inv, _ in checked][:2] == ["doc.md:1", "doc.md:4"]
    assert (
        "alexatm-train",
        "--gin_file=gin/experiments/smoke_cpu.gin",
        "--no_such_flag",
        "3",
    ) == checked[1][0].words  # the comment is not a word
    reported = [problem for _, found in checked for problem in found]
    for expected in EXPECTED:
        assert any(expected in problem for problem in reported), (expected, reported)
    clean = [inv.words for inv, found in checked if not found]
    assert clean == [("make", "demo")]


def test_checker_accepts_good_commands(tmp_path: Path):
    good = """```bash
export M=/tmp/run
alexatm-train --gin_file=gin/experiments/smoke_cpu.gin --gin_file=meshes/cpu_1.gin \\
    --gin.TRAIN_STEPS=3 --model_dir $M --log_level INFO
alexatm-convert jax-to-hf --checkpoint c --out o [--dtype float32]
alexatm-inspect --mixture alexatm_pretrain_local --data_dir data/sample -n 3 | tail -1
```
And `alexatm-vocab train ...`, `make test`, `python benchmarks/decode.py --batch_sizes 1 16`.
"""
    checked = _check(tmp_path, good)
    assert len(checked) == 6
    assert all(not found for _, found in checked), checked


def test_link_checker_finds_missing_files_and_anchors(tmp_path: Path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` heading\n")
    doc = tmp_path / "b.md"
    doc.write_text(
        "[ok](a.md#some-code-heading) [ok](#here) [x](a.md#nowhere) [y](c.md)\n"
        "[web](https://example.com/x)\n\n# Here\n"
    )
    assert link_problems(doc) == [
        "b.md: link a.md#nowhere: no heading #nowhere in a.md",
        "b.md: link c.md: c.md does not exist",
    ]


def test_docs_cited_by_the_code_exist():
    cited = doc_commands.source_references()
    assert any(page == "paper_facts.md" for _, page, _ in cited)
    docs = doc_commands.REPO_ROOT / "docs"
    missing = [
        f"{where}: docs/{page}#{anchor}"
        for where, page, anchor in cited
        if not (docs / page).is_file()
        or (anchor and anchor not in doc_commands.heading_anchors(docs / page))
    ]
    assert not missing, "\n".join(missing)
