"""The configuration reference page, written from ``conf/`` each time the site is built.

Every group, every option (one YAML file), every key and its default is listed, with the
comments the YAML file gives them, so the page cannot fall behind the configs. Values are
shown as written: interpolations such as ``${paths.output_dir}`` stay unresolved.

MkDocs runs this as a hook (``hooks:`` in mkdocs.yml); ``render`` is also what the tests read.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PAGE = "reference.md"
# The configs `python train.py` and `python -m xares.evaluate` start from.
PRIMARY = {"train": "python train.py", "eval": "python -m xares.evaluate"}

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:][^:#]*?|\"[^\"]+\"):(?:\s|$)(?P<rest>.*)$")
_COMMENT = re.compile(r"^(?P<indent> *)#\s?(?P<text>.*)$")


@dataclass
class Option:
    """One YAML file of ``conf/``: a group's option, or a primary config."""

    path: Path
    group: str  # "" for a primary config
    name: str
    header: str = ""
    package: str = ""
    defaults: list[Any] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # dotted key -> default as written
    notes: dict[str, str] = field(default_factory=dict)  # dotted key -> its comments


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value; lists and empty mappings are leaves."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def comments(text: str) -> tuple[str, dict[str, str]]:
    """The file's header comment and, per dotted key, the comments written with it.

    A key's comment is the comment block right above it plus its end-of-line comment and the
    comment lines under that one that are indented past the key (their continuation).
    """
    lines = text.splitlines()
    header: list[str] = []
    start = 0
    while start < len(lines):
        match = _COMMENT.match(lines[start])
        if not match or match["indent"]:
            break
        if not match["text"].startswith("@package"):
            header.append(match["text"])
        start += 1
    notes: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    last: tuple[str, int] | None = None  # the key whose end-of-line comment may continue
    for line in lines[start:]:
        if not line.strip():
            above, last = [], None
            continue
        match = _COMMENT.match(line)
        if match:
            column = len(match["indent"])
            if last is not None and column > last[1]:
                notes[last[0]] = f"{notes[last[0]]} {match['text']}".strip()
            else:
                above.append(match["text"])
                last = None
            continue
        key = _KEY.match(line)
        if key is None:
            above, last = [], None
            continue
        indent = len(key["indent"])
        stack = [(i, k) for i, k in stack if i < indent]
        name = key["key"].strip().strip('"')
        stack.append((indent, name))
        dotted = ".".join(k for _, k in stack)
        rest = key["rest"]
        inline = ""
        if "#" in rest and not rest.lstrip().startswith(("'", '"')):
            inline = rest[rest.index("#") + 1 :].strip()
        notes[dotted] = " ".join([*above, inline]).strip()
        above = []
        last = (dotted, indent) if inline else None
    return header_markdown(header), notes


def header_markdown(header: list[str]) -> str:
    """The header comment as markdown: its text as prose, its indented lines (commands) as code."""
    blocks: list[str] = []
    text: list[str] = []
    commands: list[str] = []
    for line in [*header, ""]:
        if line.startswith("  "):
            if text:
                blocks.append(prose(" ".join(text)))
                text = []
            commands.append(line.strip())
            continue
        if commands:
            blocks.append("```\n" + "\n".join(commands) + "\n```")
            commands = []
        if line.strip():
            text.append(line.strip())
    if text:
        blocks.append(prose(" ".join(text)))
    return "\n\n".join(blocks)


def read_option(path: Path, conf: Path) -> Option:
    relative = path.relative_to(conf).with_suffix("")
    group = relative.parent.as_posix() if relative.parent != Path(".") else ""
    text = path.read_text()
    loaded = OmegaConf.to_container(OmegaConf.create(text), resolve=False) or {}
    assert isinstance(loaded, dict), f"{path} is not a mapping"
    defaults = loaded.pop("defaults", [])
    header, notes = comments(text)
    if "# @package _global_" in text:
        package = ""
    else:
        package = group.replace("/", ".")
    return Option(
        path=path,
        group=group,
        name=relative.name,
        header=header,
        package=package,
        defaults=defaults,
        values=flatten(loaded),
        notes={k: v for k, v in notes.items() if v},
    )


def read_conf(conf: Path) -> list[Option]:
    """Every YAML file under ``conf/``, primary configs first, then groups by name."""
    options = [read_option(path, conf) for path in sorted(conf.rglob("*.yaml"))]
    order = list(PRIMARY)
    return sorted(
        options,
        key=lambda o: (o.group != "", order.index(o.name) if not o.group else 0, o.group, o.name),
    )


def value_text(value: Any) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value, ensure_ascii=False)


def code(text: str) -> str:
    """``text`` as an inline code span in a table cell."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text.replace('|', '&#124;')}{pad}{fence}"


def prose(text: str) -> str:
    """A YAML comment as markdown: code spans kept, HTML-looking text and pipes escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        part if part.startswith("`") else html.escape(part, quote=False).replace("|", "\\|")
        for part in parts
    )


def anchor(option: Option) -> str:
    return f"{option.group.replace('/', '-')}-{option.name}" if option.group else option.name


def title(option: Option) -> str:
    return f"{option.group}={option.name}" if option.group else f"{option.name}.yaml"


def keys_table(option: Option) -> list[str]:
    if not option.values:
        return ["No keys of its own."]
    prefix = f"{option.package}." if option.package else ""
    rows = ["| key | default | notes |", "|---|---|---|"]
    shown: set[str] = set()
    for key, value in option.values.items():
        parts = key.split(".")
        for end in range(1, len(parts)):  # a mapping's own comment, before its first key
            parent = ".".join(parts[:end])
            if parent in option.notes and parent not in shown:
                shown.add(parent)
                rows.append(f"| {code(prefix + parent)} |  | {prose(option.notes[parent])} |")
        note = prose(option.notes.get(key, ""))
        rows.append(f"| {code(prefix + key)} | {code(value_text(value))} | {note} |")
    return rows


def defaults_lines(option: Option) -> list[str]:
    if not option.defaults:
        return []
    entries = []
    for entry in option.defaults:
        if isinstance(entry, dict):
            ((group, choice),) = entry.items()
            entries.append(code(f"{group}: {value_text(choice)}"))
        else:
            entries.append(code(str(entry)))
    return ["", "Defaults list: " + ", ".join(entries) + "."]


def option_section(option: Option, level: str) -> list[str]:
    lines = ["", f"{level} {code(title(option))} {{ #{anchor(option)} }}", ""]
    lines.append(f"File: {code(option.path.as_posix())}.")
    if not option.group:
        lines.append(f"Used by {code(PRIMARY.get(option.name, option.name))}.")
    if option.header:
        lines += ["", option.header]
    where = f"under {code(option.package)}" if option.package else "at the top level"
    if option.group:
        lines += ["", f"Its keys sit {where} of the composed config."]
    lines += defaults_lines(option)
    lines += ["", *keys_table(option)]
    return lines


def render(conf: Path) -> str:
    """The reference page for the config tree ``conf``."""
    options = read_conf(conf)
    for option in options:
        option.path = Path("conf") / option.path.relative_to(conf)
    groups: dict[str, list[Option]] = {}
    for option in options:
        if option.group:
            groups.setdefault(option.group, []).append(option)
    lines = [
        "# Configuration reference",
        "",
        "Every config group, option, key and default under `conf/`, as the files give them. "
        "This page is generated from those files each time the site is built "
        "(`docs/hooks/config_reference.py`), so it always matches them. Values are shown as "
        "written: `${...}` interpolations are resolved only when a run composes its config, "
        "and `???` is a value that must be given. A key is set on the command line by its "
        "dotted name (`data.batch_size=8`), an option by its group (`encoder=beats`); see "
        "[Configuration](configuration.md) for what the groups are for.",
        "",
        "## Primary configs",
    ]
    for option in options:
        if not option.group:
            lines += option_section(option, "###")
    lines += ["", "## Groups", ""]
    lines += ["| group | options |", "|---|---|"]
    for group, members in groups.items():
        links = ", ".join(f"[{code(o.name)}](#{anchor(o)})" for o in members)
        lines.append(f"| {code(group)} | {links} |")
    for group, members in groups.items():
        lines += ["", f"### {code(group)} {{ #{group.replace('/', '-')} }}"]
        for option in members:
            lines += option_section(option, "####")
    return "\n".join(lines) + "\n"


def on_files(files, config):  # MkDocs hook: add the generated page to the site's files.
    from mkdocs.structure.files import File

    conf = Path(config["config_file_path"]).resolve().parent / "conf"
    files.append(File.generated(config, PAGE, content=render(conf)))
    return files
