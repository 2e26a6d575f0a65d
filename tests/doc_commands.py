"""The command lines that the README and docs/ show, and checks that each one would run.

`extract` finds every invocation of a console script, `python -m alexatm_jax...`, `python
benchmarks/*.py`, `pytest`, `make` and `tpu_scripts/*.sh` in fenced shell blocks and in inline
code spans; `problems` checks one against the repository: the program exists, its argparse
parser (built in-process) prints `--help`, every `--option` shown is one it accepts (gin
bindings `--gin.X=Y` excepted), `make` targets are in the Makefile and every repository path
shown (`--gin_file`, `tests/...`) exists.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
SEPARATORS = {";", "&", "&&", "|", "||", "(", ")", ">", ">>", "<", "2>", ">&", "2>&"}
WRAPPERS = ("time", "env", "nohup", "exec")  # words that run the command after them
REPO_DIRS = ("gin", "tests", "benchmarks", "tpu_scripts", "data", "alexatm_jax", "tasks", "docs")
PROGRAM = re.compile(
    r"(?:^|[\s;&|(])"
    r"(alexatm-[a-z]+|python3?|pytest|make|tpu_scripts/[\w/.-]+\.sh)(?=\s|$)"
)
DOC_REFERENCE = re.compile(r"docs/([a-z0-9_]+\.md)(?:#([a-z0-9_-]+))?")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One command as a doc shows it: where, and its words (program first)."""

    where: str
    words: tuple[str, ...]


def doc_files(root: Path = REPO_ROOT) -> list[Path]:
    """The README, every page under docs/ and the launchers' README."""
    return [
        root / "README.md",
        *sorted((root / "docs").glob("*.md")),
        root / "tpu_scripts" / "README.md",
    ]


@functools.cache
def console_scripts(root: Path = REPO_ROOT) -> dict[str, str]:
    """`[project.scripts]` of pyproject.toml: script name -> module that defines `main`."""
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def _strip_comment(line: str) -> str:
    """`line` without a shell comment (a `#` that starts a word, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of fenced shell blocks (continuations joined) and inline code."""
    found, fence, pending, start = [], None, "", 0
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip().lower()
            continue
        if fence is None:
            found += [(number, span) for span in INLINE_CODE.findall(line)]
        elif fence in SHELL_FENCES:
            start = start if pending else number
            pending += _strip_comment(line)
            if pending.rstrip().endswith("\\"):
                pending = pending.rstrip()[:-1] + " "
            else:
                found.append((start, pending))
                pending = ""
    return found


def _commands(line: str, variables: dict[str, str]) -> list[list[str]]:
    """The simple commands of one shell line, `$NAME`s set earlier on the page substituted."""
    for name, value in variables.items():
        line = re.sub(rf"\$(?:{name}\b|\{{{name}\}})", lambda _, v=value: v, line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def extract(path: Path, root: Path = REPO_ROOT) -> list[Invocation]:
    """Every invocation of a program of this repository (or `make`, `pytest`) that `path` shows."""
    found, variables = [], {}
    for number, line in _shell_lines(path.read_text(encoding="utf-8")):
        where = f"{path.relative_to(root)}:{number}"
        assignment = re.fullmatch(r"\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=(\S+)\s*", line)
        if not (assignment or PROGRAM.search(line)):
            continue
        try:
            if assignment:
                variables[assignment.group(1)] = shlex.split(assignment.group(2))[0]
                continue
            commands = _commands(line, variables)
        except ValueError as error:
            found.append(Invocation(where, ("<unparsable>", f"{line!r}: {error}")))
            continue
        for words in commands:
            while words and (
                words[0] in WRAPPERS or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0])
            ):
                words = words[1:]
            if words and PROGRAM.fullmatch(words[0]):
                found.append(Invocation(where, tuple(words)))
    return found


class _Parsed(BaseException):
    """Raised by the patched `parse_known_args` to hand back the parser a `main` built."""


def _parser_from_main(main) -> argparse.ArgumentParser:
    """The parser that `main` builds, caught as it starts parsing (nothing else runs)."""

    def grab(parser, *_args, **_kwargs):
        raise _Parsed(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", grab):
        try:
            main(["--help"])
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError(f"{main} returned without parsing its arguments")


@functools.cache
def parser_of(module_name: str, path: Path | None = None) -> argparse.ArgumentParser:
    """The argparse parser of a CLI module (or of the benchmark script at `path`)."""
    if path is not None:
        spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    for factory in ("build_parser", "_parser"):
        if callable(getattr(module, factory, None)):
            return getattr(module, factory)()
    return _parser_from_main(module.main)


def help_problem(parser: argparse.ArgumentParser) -> str | None:
    """None when `--help` prints a usage and exits 0, else what went wrong."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            parser.parse_args(["--help"])
    except SystemExit as exit_:
        if exit_.code in (0, None) and "usage:" in out.getvalue():
            return None
        return f"--help exited {exit_.code}"
    return "--help did not exit"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Subcommand name -> its parser (empty for a parser without subcommands)."""
    for action in parser._actions:  # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option(word: str) -> str | None:
    """The option name a word passes (`[--flag]`, `--flag=VALUE` -> `--flag`), or None."""
    word = word.strip("[]")
    if not word.startswith("-") or word in ("-", "--") or re.match(r"-\.?\d", word):
        return None
    return word.split("=", 1)[0]


def option_problems(parser: argparse.ArgumentParser, args: tuple[str, ...]) -> list[str]:
    """Options in `args` that `parser` (or the subcommand `args` names) does not accept."""
    problems, subcommands = [], _subcommands(parser)
    if subcommands and args and not any(word in subcommands for word in args):
        problems.append(f"names none of the subcommands {sorted(subcommands)}")
    for word in args:
        if word in subcommands:
            parser, subcommands = subcommands[word], {}
            if message := help_problem(parser):
                problems.append(f"{word} {message}")
            continue
        name = _option(word)
        if name and not name.startswith("--gin.") and name not in parser._option_string_actions:
            problems.append(f"{parser.prog} has no option {name}")
    return problems


def _values(args: tuple[str, ...], option: str) -> list[str]:
    """The values given to `option`, as `--option VALUE` or `--option=VALUE`."""
    values = [w.split("=", 1)[1] for w in args if w.startswith(option + "=")]
    return values + [v for o, v in zip(args, args[1:]) if o == option]


def _concrete(value: str) -> bool:
    """Whether `value` is a literal, not a placeholder such as `$G`, `...`, `<path>` or `*.gin`."""
    return not re.search(r"[$*<>{}\[\]]|\.\.\.", value)


def path_problems(args: tuple[str, ...]) -> list[str]:
    """Repository paths among `args` (and `--gin_file` values) that do not exist."""
    from alexatm_jax import gin_registry

    problems = []
    for value in _values(args, "--gin_file"):
        if _concrete(value):
            try:
                gin_registry.resolve_gin_file(value, [REPO_ROOT, REPO_ROOT / "gin"])
            except FileNotFoundError as error:
                problems.append(str(error))
    for word in args:
        path = word.split("=", 1)[-1].split("::")[0]
        if (
            path.split("/")[0] in REPO_DIRS
            and "/" in path
            and _concrete(path)
            and not (REPO_ROOT / path).exists()
        ):
            problems.append(f"{path} does not exist")
    return problems


@functools.cache
def make_targets(root: Path = REPO_ROOT) -> frozenset[str]:
    """The targets the Makefile defines."""
    text = (root / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, flags=re.M))


@functools.cache
def script_help(path: Path) -> str:
    """What `bash SCRIPT --help` prints (stdout and stderr)."""
    result = subprocess.run(
        ["bash", str(path), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout + result.stderr if result.returncode == 0 else ""


def _shell_script_problems(script: str, args: tuple[str, ...]) -> list[str]:
    path = REPO_ROOT / script
    if not path.is_file():
        return [f"{script} does not exist"]
    text = script_help(path)
    if not text:
        return [f"{script} --help failed"]
    return [
        f"{script} --help lists no option {name}"
        for name in filter(None, map(_option, args))
        if not name.startswith("--gin.")
        and not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
    ]


def _cli_problems(parser: argparse.ArgumentParser, args: tuple[str, ...]) -> list[str]:
    message = help_problem(parser)
    return ([message] if message else []) + option_problems(parser, args)


def _python_problems(args: tuple[str, ...]) -> list[str]:
    if args[:1] == ("-m",) and len(args) > 1:
        module, rest = args[1], args[2:]
        if module == "pytest" or module.split(".")[0] not in ("alexatm_jax", "tasks"):
            return []
        spec = importlib.util.find_spec(module)
        if spec is None or "__main__" not in Path(spec.origin).read_text():
            return [f"python -m {module}: no such runnable module"]
        return _cli_problems(parser_of(module), rest)
    if args and args[0].endswith(".py"):
        path = REPO_ROOT / args[0]
        if not path.is_file():
            return [f"{args[0]} does not exist"]
        return (
            _cli_problems(parser_of(args[0], path), args[1:])
            if args[0].startswith("benchmarks/")
            else []
        )
    return []


def problems(invocation: Invocation) -> list[str]:
    """What would stop `invocation` from running as written (empty when nothing)."""
    program, args = invocation.words[0], invocation.words[1:]
    if program == "<unparsable>":
        return [f"not a shell command line: {args[0]}"]
    found = path_problems(args)
    if program.startswith("alexatm-"):
        module = console_scripts().get(program)
        if module is None:
            return found + [f"{program} is not a console script in pyproject.toml"]
        found += _cli_problems(parser_of(module), args)
    elif program in ("python", "python3"):
        found += _python_problems(args)
    elif program == "make":
        found += [
            f"make {target}: no such target in the Makefile"
            for target in args
            if not target.startswith("-") and "=" not in target and target not in make_targets()
        ]
    elif program.startswith("tpu_scripts/"):
        found += _shell_script_problems(program, args)
    return found


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (`-1`, `-2` for repeats)."""
    anchors, fence = set(), False
    for line in path.read_text(encoding="utf-8").split("\n"):
        fence = fence != line.lstrip().startswith("```")
        heading = re.match(r"#{1,6} (.*)", line)
        if heading and not fence:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchor, count = slug, 0
            while anchor in anchors:
                count += 1
                anchor = f"{slug}-{count}"
            anchors.add(anchor)
    return anchors


def link_problems(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file or heading anchor does not exist."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            found.append(f"{path.name}: link {target}: {file} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            found.append(f"{path.name}: link {target}: no heading #{anchor} in {linked.name}")
    return found


def source_references(root: Path = REPO_ROOT) -> list[tuple[str, str, str]]:
    """(where, page, anchor) of every `docs/PAGE.md#anchor` cited by code, gin files and scripts."""
    found = []
    for directory in ("alexatm_jax", "tasks", "gin", "tests", "benchmarks", "tpu_scripts"):
        for path in sorted((root / directory).rglob("*")):
            if path.suffix not in (".py", ".gin", ".sh") or path.name == "test_docs_commands.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
                for page, anchor in DOC_REFERENCE.findall(line):
                    found.append((f"{path.relative_to(root)}:{number}", page, anchor))
    return found
