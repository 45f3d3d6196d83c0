"""The READMEs say only what the code does: their commands parse, their stages and paths exist.

- Every command in a fenced code block of README.md or the TEMPLATE README that starts
  `python -m espnet_freeze_omni.bin.X` names an existing module whose `get_parser()` parses
  the shown arguments. The parsers are called in this process (importing espnet2 once costs
  15-20 s; an interpreter per command would cost that each time). espnet's Task parsers read
  `--config` files, so those must exist: relative to the repository root or, for commands
  shown in a recipe dir, to the embedded recipe's dir.
- Every `./run.sh` command names stages the driver has and options it declares.
- `make` commands name targets of the Makefile.
- Python blocks compile, their imports resolve, and the methods they call on `s2s` /
  `session` and the keyword arguments of `s2s.session(...)` exist.
- Every repo path a README links (relative links, with their #anchors) or names in backticks
  exists. Paths a recipe makes when it runs (data/, dump/, exp/, ...) and names with
  placeholders (<set>, {1,2}, *, ...) are not checked.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import os
import re
import shlex
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "egs2/TEMPLATE/freeze_omni1"
DRIVER = TEMPLATE / "freeze_omni.sh"
RECIPE = REPO / "egs2/synthetic_dialog/freeze_omni1"  # where "in a recipe dir" commands run
COMMAND_READMES = [REPO / "README.md", TEMPLATE / "README.md"]
PATH_READMES = COMMAND_READMES + [p for p in sorted(REPO.glob("egs2/*/freeze_omni1/README.md"))
                                  if p != TEMPLATE / "README.md"]
# Linked pages that another change is writing; checked once they exist.
PENDING: set = set()  # paths a README may name before they exist (none now)
# What a recipe run makes, or what a user supplies: never in the repository.
RUNTIME_ROOTS = ("data/", "dump/", "exp/", "out/", "downloads/")
PLACEHOLDER = re.compile(r"[<>{}*$\[\]]|\.\.\.|\s")


# ------------------------------------------------------------------------ helpers
def code_blocks(path: Path) -> List[Tuple[str, str]]:
    """(language, text) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def shell_commands(path: Path) -> Iterator[List[str]]:
    """Each command of the README's non-Python code blocks, continuation lines joined,
    comments dropped, split like the shell would."""
    for lang, text in code_blocks(path):
        if lang == "python":
            continue
        text = text.replace("\\\n", " ")
        for line in text.splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if words:
                yield words


def python_commands(path: Path) -> List[Tuple[str, List[str]]]:
    out = []
    for words in shell_commands(path):
        if words[:2] == ["python", "-m"] and words[2].startswith("espnet_freeze_omni.bin."):
            out.append((words[2], words[3:]))
    return out


def driver_stages() -> set:
    return {int(n) for n in re.findall(r"\bin_stage (\d+)", DRIVER.read_text())}


def driver_options() -> set:
    text = DRIVER.read_text()
    block = re.search(r"^# -+ options\n(.*?)^# -+ end of options", text, flags=re.M | re.S)
    assert block, "freeze_omni.sh no longer marks its options block"
    return set(re.findall(r"^([a-z_0-9]+)=", block.group(1), flags=re.M))


@contextlib.contextmanager
def working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def config_dir(args: List[str]) -> Path:
    """Where the `--config` files of a command exist: the repo root or the recipe dir."""
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    for where in (REPO, RECIPE):
        if all((where / c).is_file() for c in configs):
            return where
    pytest.fail(f"--config {configs} exists neither under {REPO} nor under {RECIPE}")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def resolve(readme: Path, name: str) -> List[Path]:
    """Where a backticked path may live: beside the README, at the repo root, or (for a
    recipe-relative path named in an egs2 README) in any recipe."""
    here = [readme.parent / name, REPO / name]
    if "egs2" in readme.parts:
        here += list(REPO.glob(f"egs2/*/freeze_omni1/{name}"))
    return here


# ------------------------------------------------------------------------ commands
COMMANDS = [(readme.relative_to(REPO), module, args)
            for readme in COMMAND_READMES for module, args in python_commands(readme)]


def test_readmes_show_commands():
    assert COMMANDS, "no `python -m espnet_freeze_omni.bin.X` command found in the READMEs"


@pytest.mark.parametrize("readme,module,args", COMMANDS,
                         ids=[f"{r}:{m.rsplit('.', 1)[1]}" for r, m, _ in COMMANDS])
def test_python_command_parses(readme, module, args):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        pytest.fail(f"{readme} shows `python -m {module}`, which does not exist ({e})")
    assert hasattr(mod, "get_parser"), f"{module} has no get_parser()"
    parser = mod.get_parser()
    with working_dir(config_dir(args)):
        try:
            parser.parse_args(args)
        except SystemExit as e:
            pytest.fail(f"{readme}: `python -m {module} {shlex.join(args)}` does not parse "
                        f"(exit {e.code}; see the captured stderr)")


RUN_COMMANDS = [(readme.relative_to(REPO), words)
                for readme in COMMAND_READMES for words in shell_commands(readme)
                if words[0] == "./run.sh"]


@pytest.mark.parametrize("readme,words", RUN_COMMANDS,
                         ids=[f"{r}:{' '.join(w[1:5])}" for r, w in RUN_COMMANDS])
def test_run_sh_stages_and_options_exist(readme, words):
    stages, options = driver_stages(), driver_options()
    i = 1
    while i < len(words):
        word = words[i]
        assert word.startswith("--"), f"{readme}: `{shlex.join(words)}`: {word!r} is no option"
        name, eq, value = word[2:].partition("=")
        if not eq:
            value = words[i + 1]
            i += 1
        i += 1
        assert name in options, f"{readme}: `{shlex.join(words)}`: the driver has no --{name}"
        if name in ("stage", "stop_stage"):
            assert int(value) in stages, f"{readme}: the driver has no stage {value}"
        if name == "only_stages":
            for n in value.split():
                assert int(n) in stages, f"{readme}: the driver has no stage {n}"


def test_make_targets_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    for readme in COMMAND_READMES:
        for words in shell_commands(readme):
            if words[0] == "make":
                for target in words[1:]:
                    assert target in targets, f"{readme}: the Makefile has no target {target}"
    assert "make test" in (REPO / ".ci/run").read_text(), ".ci/run must run `make test`"


def test_python_blocks_name_real_api():
    from espnet_freeze_omni.inference.duplex_session import DuplexSession, SessionOptions
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    owners = {"s2s": Speech2Speech, "session": DuplexSession, "Speech2Speech": Speech2Speech}
    options = {f.name for f in SessionOptions.__dataclass_fields__.values()}
    blocks = [text for readme in COMMAND_READMES for lang, text in code_blocks(readme)
              if lang == "python"]
    assert blocks, "README.md shows no Python usage"
    for text in blocks:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(mod, alias.name), f"{node.module} has no {alias.name}"
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in owners:
                assert hasattr(owners[node.value.id], node.attr), \
                    f"README: {node.value.id}.{node.attr} does not exist"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "session":
                for kw in node.keywords:
                    assert kw.arg in options, f"README: session option {kw.arg} does not exist"


# ------------------------------------------------------------------------ paths
def linked_paths(readme: Path) -> Iterator[Tuple[str, str]]:
    text = readme.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            path, _, anchor = target.partition("#")
            yield path, anchor


def backticked_paths(readme: Path) -> Iterator[str]:
    text = re.sub(r"^```.*?^```", "", readme.read_text(), flags=re.M | re.S)
    for name in re.findall(r"`([^`\n]+)`", text):
        if "/" not in name or PLACEHOLDER.search(name) or name.startswith(("-", "/", "http")):
            continue
        if name.startswith(RUNTIME_ROOTS) or "=" in name:
            continue
        yield name


@pytest.mark.parametrize("readme", PATH_READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_linked_paths_exist(readme):
    for path, anchor in linked_paths(readme):
        target = (readme.parent / path).resolve() if path else readme
        rel = os.path.relpath(target, REPO)
        if rel in PENDING and not target.exists():
            continue
        assert target.exists(), f"{readme.relative_to(REPO)} links {path}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), \
                f"{readme.relative_to(REPO)} links {path}#{anchor}: no such heading"


@pytest.mark.parametrize("readme", PATH_READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_backticked_paths_exist(readme):
    for name in backticked_paths(readme):
        if name in PENDING:
            continue
        assert any(p.exists() for p in resolve(readme, name)), \
            f"{readme.relative_to(REPO)} names `{name}`, which does not exist"
