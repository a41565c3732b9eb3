"""The documentation: the generated configuration reference and the README's map into docs/."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import yaml
from helpers.config import CONF, ROOT
from omegaconf import OmegaConf

DOCS = ROOT / "docs"


def load_hook():
    spec = importlib.util.spec_from_file_location(
        "config_reference", DOCS / "hooks" / "config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> str:
    return load_hook().render(CONF)


def sections(page: str) -> dict[str, str]:
    """Option title (``encoder=beats``, ``train.yaml``) -> the text of its section."""
    parts = re.split(r"^#{3,4} `([^`]+)` \{ #[^}]+ \}$", page, flags=re.M)
    found = dict(zip(parts[1::2], parts[2::2], strict=True))
    return {title: text for title, text in found.items() if "=" in title or ".yaml" in title}


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def shown(value) -> str:
    return value if isinstance(value, str) and value else json.dumps(value, ensure_ascii=False)


def test_the_reference_lists_every_option_key_and_default(reference):
    by_title = sections(reference)
    files = sorted(CONF.rglob("*.yaml"))
    assert len(by_title) == len(files)
    for path in files:
        relative = path.relative_to(CONF).with_suffix("")
        group = relative.parent.as_posix()
        title = f"{group}={relative.name}" if group != "." else f"{relative.name}.yaml"
        assert title in by_title, f"{path} has no section in the reference"
        section = by_title[title]
        text = path.read_text()
        config = OmegaConf.to_container(OmegaConf.create(text), resolve=False) or {}
        for entry in config.pop("defaults", []):
            if isinstance(entry, dict):
                ((choice_group, choice),) = entry.items()
                entry = f"{choice_group}: {shown(choice)}"
            assert f"`{entry}`" in section, f"{title}: defaults entry {entry} missing"
        package = "" if "@package _global_" in text or group == "." else group.replace("/", ".")
        rows = dict(
            line[2:].split(" | ", 2)[:2] for line in section.splitlines() if line.startswith("| `")
        )
        for key, value in leaves(config):
            name = f"`{package}.{key}`" if package else f"`{key}`"
            assert name in rows, f"{title}: key {key} missing from the reference"
            assert rows[name] == f"`{shown(value)}`", (title, key, rows[name])


def test_the_reference_carries_the_yaml_comments(reference):
    slurm = sections(reference)["hydra/launcher=slurm"]
    assert "| `hydra.launcher.timeout_min` | `360` | wall time per run (minutes)" in slurm
    train = sections(reference)["train.yaml"]
    # A comment continued on the next line belongs to the key above it.
    assert "(marked in scores.json) instead of failing the run" in train
    assert "| `generation` |  | protocol: greedy" in train


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))

    def pages(nav):
        for item in nav:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(config["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    assert listed == on_disk | {load_hook().PAGE}


def test_the_readme_is_a_short_map_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    commands = re.findall(r"^make \w+", readme.split("```bash", 1)[1], flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert links
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
