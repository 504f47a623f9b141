"""The docs say only what the repository can do.

For README.md and every docs/**/*.md:

* every command in a fenced ```bash block that runs ``.venv/bin/python tools/X.py`` or
  ``.venv/bin/python benchmarks/X.py`` (also behind ``VAR=value`` assignments, ``time``, or
  ``.venv/bin/torchrun``) names a script that exists, and every ``--flag`` it passes appears in
  that script's ``--help``; every ``make X`` names a target of the Makefile;
* every relative markdown link ``[text](path)`` and image ``![alt](path)`` resolves to a file
  or folder that exists (http(s)/mailto links and ``#anchors`` are not checked).

The parsing functions take plain strings, so the unit tests at the top feed them a synthetic
page with mistakes and check that each mistake is reported.
"""
import functools
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_README_LINES = 250

#: languages of the fenced blocks whose commands are checked
SHELL_LANGS = {"bash", "sh", "shell", "console"}
#: interpreters whose script argument is checked (relative to the repository root)
RUNNERS = {".venv/bin/python", ".venv/bin/torchrun"}
SCRIPT_DIRS = ("tools/", "benchmarks/")
#: words that may stand in front of a command without changing what runs
PREFIX_WORDS = {"time", "nice", "exec"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
HELP_FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9_-]*")
#: [text](target) or ![alt](target); target without spaces, optional "title"
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def doc_files(root: Path = ROOT) -> List[Path]:
    return [root / "README.md"] + sorted((root / "docs").rglob("*.md"))


# -- fenced blocks and the commands in them ------------------------------------------------


def fenced_blocks(text: str) -> List[Tuple[str, int, List[str]]]:
    """(language, line number of the first content line, lines) of every fenced block."""
    blocks, lang, start, body, fence = [], None, 0, [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            m = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                fence, lang, start, body = m.group(1), m.group(2).lower(), number + 1, []
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            blocks.append((lang, start, body))
            fence = None
        else:
            body.append(line)
    return blocks


def shell_commands(text: str) -> List[Tuple[int, str]]:
    """(line number, command line) of every command in the shell blocks of ``text``, with
    backslash continuations joined."""
    commands = []
    for lang, start, lines in fenced_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        pending, first = "", None
        for offset, line in enumerate(lines):
            if first is None:
                first = start + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            commands.append((first, pending + line))
            pending, first = "", None
        if pending:
            commands.append((first, pending))
    return commands


def split_command(line: str) -> List[List[str]]:
    """The simple commands of one shell line (split at ``&&``, ``||``, ``;``, ``|``), comments
    dropped. Raises ValueError for unbalanced quotes."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    commands, current = [], []
    for token in lex:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def strip_prefix(tokens: List[str]) -> List[str]:
    """``tokens`` without leading ``VAR=value`` assignments and prefix words such as ``time``."""
    i = 0
    while i < len(tokens) and (ENV_ASSIGNMENT.match(tokens[i]) or tokens[i] in PREFIX_WORDS):
        i += 1
    return tokens[i:]


def flags_of(tokens: Iterable[str]) -> List[str]:
    """The ``--long`` options among ``tokens`` (``--flag=value`` gives ``--flag``)."""
    flags = []
    for token in tokens:
        if token == "--":
            break
        if token.startswith("--") and len(token) > 2:
            flags.append(token.split("=", 1)[0])
    return flags


def parse_command(tokens: List[str]):
    """What one simple command runs that the docs test checks:
    ("script", path, flags), ("make", targets) or None."""
    tokens = strip_prefix(tokens)
    if not tokens:
        return None
    if tokens[0] == "make":
        targets = [t for t in tokens[1:] if not t.startswith("-") and not ENV_ASSIGNMENT.match(t)]
        return ("make", targets)
    if tokens[0] not in RUNNERS:
        return None
    if tokens[0].endswith("python"):
        # only `python SCRIPT ...`: `python -m x`, `python -c ...` run something else
        index = 1 if len(tokens) > 1 and tokens[1].startswith(SCRIPT_DIRS) else None
    else:  # torchrun: its own options come before the script
        index = next((i for i, t in enumerate(tokens[1:], 1) if t.startswith(SCRIPT_DIRS)), None)
    if index is None:
        return None
    return ("script", tokens[index], flags_of(tokens[index + 1:]))


def makefile_targets(makefile_text: str) -> Set[str]:
    targets = set()
    for line in makefile_text.splitlines():
        if line.startswith(("\t", "#", " ")):
            continue
        m = re.match(r"^([^:=#]+?)\s*::?(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def help_flags(help_text: str) -> Set[str]:
    return set(HELP_FLAG.findall(help_text))


def check_commands(text: str, source: str, script_exists: Callable[[str], bool],
                   script_help: Callable[[str], Optional[str]],
                   make_targets: Set[str]) -> List[str]:
    """Problems with the commands of ``text`` (one string each, naming ``source`` and line).
    ``script_help(path)`` returns the script's ``--help`` output, or None if that failed."""
    problems = []
    for line_number, line in shell_commands(text):
        where = f"{source}:{line_number}"
        try:
            commands = split_command(line)
        except ValueError as e:
            problems.append(f"{where}: cannot parse `{line.strip()}` as shell ({e})")
            continue
        for tokens in commands:
            parsed = parse_command(tokens)
            if parsed is None:
                continue
            if parsed[0] == "make":
                for target in parsed[1]:
                    if target not in make_targets:
                        problems.append(f"{where}: `make {target}`: no target {target!r} in the "
                                        f"Makefile (targets: {', '.join(sorted(make_targets))})")
                continue
            _, script, flags = parsed
            if not script_exists(script):
                problems.append(f"{where}: {script} does not exist")
                continue
            if not flags:
                continue
            help_text = script_help(script)
            if help_text is None:
                problems.append(f"{where}: `{script} --help` failed")
                continue
            known = help_flags(help_text)
            for flag in flags:
                if flag not in known:
                    problems.append(f"{where}: {script} has no option {flag} (not in its --help)")
    return problems


# -- links -----------------------------------------------------------------------------------


def prose_lines(text: str) -> List[Tuple[int, str]]:
    """(line number, line) outside fenced blocks, inline code removed."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            m = re.match(r"^(`{3,}|~{3,})", stripped)
            if m:
                fence = m.group(1)
                continue
            out.append((number, INLINE_CODE.sub("", line)))
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            fence = None
    return out


def markdown_links(text: str) -> List[Tuple[int, str]]:
    """(line number, target) of every link and image in the prose of ``text``."""
    return [(n, m.group(1)) for n, line in prose_lines(text) for m in MD_LINK.finditer(line)]


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("#")


def check_links(text: str, page: Path, root: Path = ROOT) -> List[str]:
    """Problems with the relative links of ``text``, a page at ``page``."""
    problems = []
    for line_number, target in markdown_links(text):
        if is_external(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue
        resolved = (root / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
        if not resolved.exists():
            try:
                shown = page.relative_to(root)
            except ValueError:
                shown = page
            problems.append(f"{shown}:{line_number}: link target {target!r} does not exist "
                            f"(looked for {resolved})")
    return problems


# -- unit tests of the checkers on a synthetic page --------------------------------------------

SYNTHETIC = """\
# A page

See [the guide](docs/guide.md), [a missing page](docs/nope.md#part), ![a plot](img/missing.png),
[an anchor](#a-page), [the web](https://example.com/x.md) and `[code](not/checked.md)`.

```bash
.venv/bin/python tools/train.py --config-file a.yaml --bogus 3 \\
    --epochs=2 SOLVER.BASE_LR 0.1   # trailing comment, it's fine
OMP_NUM_THREADS=1 .venv/bin/python tools/train.py --config-file a.yaml
.venv/bin/python tools/missing.py --x
make demo && make nosuchtarget
.venv/bin/torchrun --nproc_per_node 2 tools/train.py --wrong
.venv/bin/python -m pytest -q --anything
```

```python
# not shell: not checked
.venv/bin/python tools/missing2.py --x
```

```
[inside code](not/checked/either.md)
```
"""


def _synthetic_problems(tmp_path: Path) -> Tuple[List[str], List[str]]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("guide\n")
    page = tmp_path / "README.md"
    page.write_text(SYNTHETIC)
    helps = {"tools/train.py": "usage: train.py [-h] [--config-file FILE] [--epochs N]\n"}
    calls = []

    def fake_help(script):
        calls.append(script)
        return helps.get(script)

    commands = check_commands(SYNTHETIC, "README.md", lambda s: s in helps, fake_help, {"demo"})
    links = check_links(SYNTHETIC, page, tmp_path)
    return commands, links


def test_checker_reports_bad_flags_scripts_and_targets(tmp_path):
    problems, _ = _synthetic_problems(tmp_path)
    text = "\n".join(problems)
    assert "README.md:7: tools/train.py has no option --bogus" in text
    assert "tools/missing.py does not exist" in text
    assert "no target 'nosuchtarget'" in text
    assert "tools/train.py has no option --wrong" in text   # after torchrun's own options
    # what is right, or not checked, is not reported
    assert "--config-file" not in text and "--epochs" not in text
    assert "--nproc_per_node" not in text and "--anything" not in text
    assert "missing2" not in text and "'demo'" not in text
    assert len(problems) == 4, problems


def test_checker_reports_missing_link_targets(tmp_path):
    _, problems = _synthetic_problems(tmp_path)
    text = "\n".join(problems)
    assert "'docs/nope.md#part' does not exist" in text
    assert "'img/missing.png' does not exist" in text
    assert len(problems) == 2, problems   # guide.md exists; anchors, URLs and code are skipped


def test_command_parsing():
    line = 'FOO=1 time .venv/bin/python benchmarks/run.py --json=x.json --only losses # c'
    (tokens,) = split_command(line)
    assert parse_command(tokens) == ("script", "benchmarks/run.py", ["--json", "--only"])
    assert parse_command(["make", "-j2", "demo", "V=1"]) == ("make", ["demo"])
    assert parse_command([".venv/bin/python", "-c", "print(1)", "tools/x.py"]) is None
    assert parse_command(["python", "tools/x.py", "--y"]) is None   # only .venv/bin/python
    assert makefile_targets("A := 1\nall: b\n\techo x\n$(S): c\nx y: z\n") == {
        "all", "$(S)", "x", "y"}
    assert shell_commands("```bash\na \\\n  b\nc\n```\n") == [(2, "a    b"), (4, "c")]


# -- the real docs -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def script_help(script: str) -> Optional[str]:
    """``python SCRIPT --help`` from the repository root (cached per script)."""
    try:
        proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


def documented_scripts(pages: Iterable[Path]) -> Set[str]:
    scripts = set()
    for page in pages:
        for _, line in shell_commands(page.read_text()):
            try:
                commands = split_command(line)
            except ValueError:
                continue
            for tokens in commands:
                parsed = parse_command(tokens)
                if parsed and parsed[0] == "script" and parsed[2] and (ROOT / parsed[1]).is_file():
                    scripts.add(parsed[1])
    return scripts


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.split("#", 1)[0]).resolve()
              for _, t in markdown_links((ROOT / "README.md").read_text()) if not is_external(t)}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    missing = [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_documented_commands_exist_with_their_flags():
    pages = doc_files()
    scripts = sorted(documented_scripts(pages))
    with ThreadPoolExecutor(max_workers=2) as pool:   # warm the cache, two at a time
        list(pool.map(script_help, scripts))
    targets = makefile_targets((ROOT / "Makefile").read_text())
    problems = []
    for page in pages:
        problems += check_commands(page.read_text(), str(page.relative_to(ROOT)),
                                   lambda s: (ROOT / s).is_file(), script_help, targets)
    assert not problems, "\n".join(problems)


def test_relative_links_resolve():
    problems = []
    for page in doc_files():
        problems += check_links(page.read_text(), page)
    assert not problems, "\n".join(problems)
