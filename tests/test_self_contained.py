"""The repository stands on its own: no tracked file cites a document outside it, and every
module keeps its functions short enough to read in one screen."""

import ast
import pathlib
import subprocess

import pytest

OUTSIDE_DOCUMENTS = ("PAPER" + ".md", "DESIGN" + ".md", "../" + "shared/")
MAX_FUNCTION_LINES = 80


def _tracked_files(root: pathlib.Path) -> list[pathlib.Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [root / name for name in listed if (root / name).is_file()]


def test_no_tracked_file_cites_a_document_outside_the_repository(repo_root):
    found = []
    for path in _tracked_files(repo_root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary data
        found += [
            f"{path.relative_to(repo_root)}: {name}" for name in OUTSIDE_DOCUMENTS if name in text
        ]
    assert not found, "cite docs/paper_facts.md instead: " + "; ".join(found)


def test_every_library_function_fits_in_about_80_lines(repo_root):
    too_long = []
    for path in sorted((repo_root / "alexatm_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(
                        f"{path.relative_to(repo_root)}:{node.lineno} {node.name} ({length} lines)"
                    )
    assert not too_long, "split these: " + "; ".join(too_long)
