"""Docs that hold: every relative link and image exists (anchors too), every page says that
LeukEdge is not a diagnostic device, nothing shipped names a folder of the machine that built
it, and every edge-train / edge-convert / edge-app / edge-bench
command in a code block names a real subcommand and real options of the click commands.

Fast: parses Markdown and walks the click command tree; no job is run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHIPPED = [
    *DOCS,
    *sorted((REPO / "models").glob("*.md")),
    *sorted((REPO / "models").glob("*.json")),
    *sorted((REPO / "edge_app" / "deploy").glob("leukedge*.*")),
]
UNITS = sorted((REPO / "edge_app" / "deploy").glob("*.service"))
# Folders of a build machine. /home/pi/ is the Raspberry Pi's own default home (the deploy
# target the docs describe), not the build machine's, so it is allowed.
BUILD_PATH = re.compile(
    r"(?<![\w.~$-])/(?:work|root|tmp)/[\w.-]|(?<![\w.~$-])/home/(?!pi/)[\w.-]+/"
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
SEPARATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "&", "<", "1>", "2>>"}


def commands() -> dict[str, click.Command]:
    from leukedge.benchmarks.cli import main as bench
    from leukedge.convert.cli import main as convert
    from leukedge.edge_app.cli import main as app
    from leukedge.train.cli import main as train

    return {"edge-train": train, "edge-convert": convert, "edge-app": app, "edge-bench": bench}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    text = FENCE.sub("", path.read_text())
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return LINK.findall(text)


def test_every_page_says_it_is_not_a_diagnostic_device():
    pages = [*DOCS, *sorted((REPO / "models").glob("*.md"))]
    assert len(pages) > 10
    silent = [p.name for p in pages if "not a diagnostic device" not in p.read_text().lower()]
    assert not silent, f"pages without the screening-aid notice: {silent}"


def test_every_relative_link_and_image_exists():
    broken = []
    for doc in DOCS:
        for target in links(doc):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            destination = (doc.parent / file_part).resolve() if file_part else doc
            if not destination.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such section)")
    assert not broken, "\n".join(broken)


def test_link_checker_finds_broken_links_and_anchors(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text(
        "# Storage budget\n## Storage budget\n[ok](#storage-budget-1) [bad](#nope) "
        "![img](missing.png) [x](a.md#storage-budget)\n```\n[not a link](nowhere.md)\n```\n"
    )
    assert links(doc) == ["#storage-budget-1", "#nope", "missing.png", "a.md#storage-budget"]
    assert anchors(doc) == {"storage-budget", "storage-budget-1"}
    assert (
        slug("Where it stands (measured on a 2-core x86 machine, no GPU; commands in the docs)")
        == "where-it-stands-measured-on-a-2-core-x86-machine-no-gpu-commands-in-the-docs"
    )


def test_nothing_shipped_names_a_build_machine_folder():
    found = []
    for path in SHIPPED:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in BUILD_PATH.finditer(line):
                found.append(
                    f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]} ({match.group(0)})"
                )
    assert not found, (
        "absolute paths of the build machine (write ../shared/... or a relative path):\n"
        + "\n".join(found)
    )


@pytest.mark.parametrize(
    "text, bad",
    [
        ("see /work/runs/x", True),
        ("cd /root/x", True),
        ("/tmp/abc", True),
        ("/home/alice/data", True),
        ("/home/pi/leukedge/frames", False),
        ("../shared/data", False),
        ("https://x.org/tmp/y", False),
        ("$HOME/tmp/x", False),
        ("~/work/x", False),
    ],
)
def test_build_path_pattern(text, bad):
    assert bool(BUILD_PATH.search(text)) is bad


def command_lines(path: Path) -> list[tuple[str, list[str]]]:
    """(program, arguments) of every LeukEdge command in the file's fenced code blocks."""
    programs = commands()
    found = []
    for block in FENCE.findall(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote in prose-like output: not a command
                continue
            for index, token in enumerate(tokens):
                name = Path(token).name
                start = max([i + 1 for i, t in enumerate(tokens[:index]) if t in SEPARATORS] or [0])
                prefix = tokens[start:index]  # VAR=value assignments, time, sudo ... before it
                if name in programs and all(
                    re.fullmatch(r"\w+=.*", t) or t in ("time", "sudo", "nice", "exec")
                    for t in prefix
                ):
                    args = []
                    for arg in tokens[index + 1 :]:
                        if (
                            arg in SEPARATORS
                            or re.fullmatch(r"\d?>+&?\d*", arg)
                            or arg.startswith((">", "2>"))
                        ):
                            break
                        args.append(arg)
                    found.append((name, args))
    return found


def problems(program: str, args: list[str]) -> list[str]:
    """What is wrong with `program args` against the click tree: unknown subcommand or option."""
    from leukedge.edge_app.clitools import DefaultCommandGroup, closest

    command = commands()[program]
    where = program
    args = list(args)
    if isinstance(command, click.Group):
        first = next((a for a in args if not a.startswith("-")), None)
        if args and args[0] in ("-h", "--help", "--version"):
            return []
        if first is not None and first in command.commands:
            args.remove(first)
            command, where = command.commands[first], f"{program} {first}"
        elif isinstance(command, DefaultCommandGroup):
            if (
                first is not None
                and closest(first, command.commands)
                and "/" not in first
                and "." not in first
            ):
                return [
                    f"{program} {first}: not a subcommand (did you mean {closest(first, command.commands)}?)"
                ]
            command, where = (
                command.commands[command.default_command],
                f"{program} {command.default_command}",
            )
        else:
            return [f"{program} {first}: no such subcommand ({', '.join(command.commands)})"]
    options: dict[str, click.Parameter] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                options[name] = param
    options.update({"-h": None, "--help": None})
    found = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if not arg.startswith("-") or arg == "-" or re.fullmatch(r"-\d+(\.\d+)?", arg):
            continue
        name, has_value, _ = arg.partition("=")
        param = options.get(name, "missing")
        if param == "missing":
            found.append(f"{where}: no such option {name}")
            continue
        if (
            param is not None
            and not param.is_flag
            and not has_value
            and not getattr(param, "count", False)
        ):
            skip = True
    return found


def test_every_documented_command_names_real_subcommands_and_options():
    bad, seen = [], 0
    for doc in DOCS:
        for program, args in command_lines(doc):
            seen += 1
            bad += [
                f"{doc.relative_to(REPO)}: {program} {' '.join(args)}\n    -> {p}"
                for p in problems(program, args)
            ]
    assert seen > 30  # the docs are full of commands: finding few means the parser broke
    assert not bad, "\n".join(bad)


def test_every_systemd_unit_runs_a_real_command():
    """The deploy units' ExecStart lines, checked like the docs' commands (a renamed option in a
    unit would only show on the Pi, at boot)."""
    seen, bad = 0, []
    for unit in UNITS:
        text = unit.read_text().replace("\\\n", " ")
        for line in re.findall(r"^ExecStart=(.+)$", text, re.M):
            program, *args = shlex.split(line)
            seen += 1
            bad += [f"{unit.name}: {p}" for p in problems(Path(program).name, args)]
    assert seen == len(UNITS) >= 2 and not bad, bad


def test_command_checker_catches_typos():
    assert problems("edge-bench", ["robustnes", "runs/conv"])
    assert problems("edge-bench", ["runs/conv", "--thread", "1"]) == [
        "edge-bench run: no such option --thread"
    ]
    assert problems("edge-app", ["rn", "--source", "x"])
    assert problems("edge-app", ["run", "--source", "x", "--max-disk", "5"])
    assert problems("edge-train", ["--out", "x", "--weights", "none"]) == []
    assert problems("edge-convert", ["runs/x", "--out", "y", "--variant", "int8"])
    assert problems("edge-bench", ["robustness", "runs/conv", "--help"]) == []
    assert command_lines_of(
        "x=1 edge-app run --db a.sqlite | head && edge-bench unattended --json u.json"
    ) == [
        ("edge-app", ["run", "--db", "a.sqlite"]),
        ("edge-bench", ["unattended", "--json", "u.json"]),
    ]


def command_lines_of(text: str, tmp=Path("/dev/shm") if Path("/dev/shm").is_dir() else None):
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        doc = Path(folder) / "d.md"
        doc.write_text(f"```bash\n{text}\n```\n")
        return command_lines(doc)


def test_every_option_of_every_command_says_what_it_does():
    """`--help` is the first manual people read: an option listed there without a line of help
    leaves them guessing (several benchmark options had none)."""
    from leukedge.benchmarks.cli import main as edge_bench
    from leukedge.convert.cli import main as edge_convert
    from leukedge.edge_app.cli import main as edge_app
    from leukedge.train.cli import main as edge_train

    def silent(command: click.Command, name: str):
        if isinstance(command, click.Group):
            for sub, child in command.commands.items():
                yield from silent(child, f"{name} {sub}")
            return
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help" and not param.help:
                yield f"{name} {'/'.join(param.opts)}"

    commands = {
        "edge-train": edge_train,
        "edge-convert": edge_convert,
        "edge-app": edge_app,
        "edge-bench": edge_bench,
    }
    missing = [option for name, command in commands.items() for option in silent(command, name)]
    assert not missing, missing
