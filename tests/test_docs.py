"""Docs are code: every command in README.md and docs/*.md that calls one of the project's scripts parses
(the script exists and its parser accepts every flag and choice; nothing runs), every make target they
name exists, and no link leaves the repository."""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOC_PAGES = ("data", "training", "evaluation", "reproducing", "using", "networks", "speed")  # a page per job
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SHELLS = ("", "sh", "bash", "shell", "console")
EXTERNAL = ("pip", "tensorboard", "git", "cd", "export", "ls", "du", "nvidia-smi")  # not the project's


def shell_lines(text: str) -> list[str]:
    """Commands of the page: the lines of shell code blocks (backslash continuations joined, comments
    dropped) and inline code that starts like a command."""
    lines = []
    for lang, body in FENCE.findall(text):
        if lang not in SHELLS:
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()  # a comment after the command
            if line and not line.startswith("#"):
                lines.append(line)
    stripped = FENCE.sub("", text)
    lines += [m for m in INLINE.findall(stripped) if re.match(r"(python3? |make |torchrun )", m)]
    return lines


def commands() -> list[tuple[str, str]]:
    """(page, command) for every command that calls the project: python X.py / python -m M / make T / torchrun."""
    found = []
    for page in PAGES:
        for line in shell_lines(page.read_text()):
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                words = part.split()
                while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                    words = words[1:]
                if words and words[0] in ("python", "python3", "make", "torchrun"):
                    found.append((page.relative_to(REPO).as_posix(), " ".join(words)))
    return found


def parser_of(module_name: str):
    module = importlib.import_module(module_name)
    assert hasattr(module, "get_args_parser"), f"{module_name} has no get_args_parser() for its command line"
    return module.get_args_parser()


def check_parses(parser, argv: list[str], what: str) -> None:
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{what}: the parser refuses {shlex.join(argv)} (exit {e.code})") from None


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


def check_command(command: str) -> None:
    words = shlex.split(command)
    tool, args = words[0], words[1:]
    if tool == "make":
        unknown = [t for t in args if not t.startswith("-") and t not in make_targets()]
        assert not unknown, f"make: no target(s) {unknown} in the Makefile"
        return
    if tool == "torchrun":
        while args and not args[0].endswith(".py"):  # torchrun's own options
            args = args[1:]
    elif args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        if module in ("pytest", "pip", "venv", "tensorboard"):
            return
        assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
        check_parses(parser_of(module), rest, f"python -m {module}")
        return
    if not args or args[0] == "-c":
        return
    script, rest = args[0], args[1:]
    assert (REPO / script).is_file(), f"{script}: no such script in the repository"
    name = Path(script).stem
    if name == "reproduce":  # flags after a bare -- go to the protocol's training script
        main, extra = (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest else (rest, [])
        check_parses(parser_of("reproduce"), main, script)
        if extra:
            import reproduce

            protocol = reproduce.PROTOCOLS[main[1]]
            check_parses(parser_of(Path(protocol.script).stem), extra, f"{script} -- (to {protocol.script})")
        return
    module_name = ".".join(Path(script).with_suffix("").parts)
    check_parses(parser_of(module_name), rest, script)


ALL = commands()


def test_the_docs_have_a_page_per_job_and_a_short_front_page():
    for name in DOC_PAGES:
        assert (REPO / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    assert len((REPO / "README.md").read_text().splitlines()) <= 210  # a front page, the shelf is docs/
    assert len(ALL) > 30  # the commands were found (a change of the page format would hide them)


@pytest.mark.parametrize("page,command", ALL, ids=[f"{p}: {c[:60]}" for p, c in ALL])
def test_every_documented_command_parses(page, command):
    check_command(command)


def test_the_checker_catches_a_removed_flag_and_a_wrong_choice():
    with pytest.raises(AssertionError, match="refuses"):
        check_command("python train_pixel.py --data-root d --no-such-flag")
    with pytest.raises(AssertionError, match="refuses"):
        check_command("python eval.py --checkpoint c --data-root d --amp fp8")
    with pytest.raises(AssertionError, match="no such script"):
        check_command("python train_nothing.py")
    with pytest.raises(AssertionError, match="no target"):
        check_command("make no-such-target")


def test_no_link_leaves_the_repository_and_nothing_is_stale():
    for page in PAGES:
        text = page.read_text()
        name = page.relative_to(REPO)
        assert not re.search(r"https?://", text), f"{name}: a URL (name the site without a link)"
        assert "in this version" not in text.lower(), f"{name}: says 'in this version'"
        for target in LINK.findall(text):
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(REPO), f"{name}: link {target} leaves the repository"
            assert path.exists(), f"{name}: link {target} points to nothing"
