"""The documents a newcomer reads: the help page has an anchored entry for every keyword ChimeraX parses, every
relative link and repository path in the Markdown docs resolves, and the README stays short enough to read."""

from __future__ import annotations

import importlib
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HELP_PAGE = ROOT / "docs" / "user" / "commands" / "defmap.html"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200
# inline code naming a file of the repository (not outputs such as training/runs/…)
REPO_PATH = re.compile(r"(?:src|tests|tools|training|docs|examples|onnx_models)/[\w./-]+")
GENERATED = ("training/runs/", "training/data/")


class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.names += [v for k, v in attrs if k in ("name", "id") and v]


def html_anchors(path: Path) -> set[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return set(parser.names)


def _prose(text: str) -> str:
    """The Markdown without fenced code blocks, whose brackets and paths are commands, not links."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def md_anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(path.read_text(encoding="utf-8")), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def md_links(path: Path) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", _prose(path.read_text(encoding="utf-8")))
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)


def registered_commands() -> list[tuple[str, object]]:
    """(command name, CmdDesc) for each command the bundle registers, built by the factory ChimeraX calls."""
    from chimerax.defmap import bundle_api
    out = []
    for name, (module, _func, desc) in bundle_api.COMMANDS.items():
        out.append((name, getattr(importlib.import_module(f"chimerax.defmap.{module}"), desc)()))
    return out


def keyword_anchor(command: str, keyword: str) -> str:
    """``defmap`` keywords are anchored by name (``#mapResolution``), a subcommand's as ``#compare-distance``."""
    sub = "-".join(command.split()[1:])
    return f"{sub}-{keyword}" if sub else keyword


def test_help_page_has_an_entry_for_every_keyword(session):
    from chimerax.core.commands.cli import command_url
    anchors = html_anchors(HELP_PAGE)
    commands = registered_commands()
    assert {name for name, _ in commands} == {"defmap", "defmap models", "defmap compare", "defmap fragments"}
    missing = []
    for name, desc in commands:
        # what ChimeraX parses: the keyword names users type, snake_case turned to camelCase (mapResolution)
        keywords = list(desc._keyword_map)
        assert keywords, name
        missing += [f"{name} {kw} (#{keyword_anchor(name, kw)})" for kw in keywords
                    if keyword_anchor(name, kw) not in anchors]
        # `help defmap compare` opens the page at the subcommand's own anchor
        url = urlparse(command_url(name))
        assert (url.scheme, url.path) == ("help", "user/commands/defmap.html"), name
        assert url.fragment == "" or url.fragment in anchors, (name, url.fragment)
    assert not missing, f"help page entries missing for: {', '.join(missing)}"


def test_help_page_links_within_the_page_resolve():
    text = HELP_PAGE.read_text(encoding="utf-8")
    anchors = html_anchors(HELP_PAGE)
    assert not [a for a in re.findall(r'href="#([^"]+)"', text) if a not in anchors]


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for link in md_links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md" and anchor not in md_anchors(path):
            broken.append(link)
        elif anchor and path.suffix == ".html" and anchor not in html_anchors(path):
            broken.append(link)
    assert not broken, f"{doc.name}: links that do not resolve: {broken}"


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_text_exist(doc):
    spans = re.findall(r"`([^`\n]+)`", _prose(doc.read_text(encoding="utf-8")))
    paths = {s.split("::")[0] for s in spans if REPO_PATH.fullmatch(s.split("::")[0])}
    missing = sorted(p for p in paths if not p.startswith(GENERATED) and not (ROOT / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_readme_reads_in_five_minutes():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


@pytest.mark.parametrize("doc", [*MARKDOWN, HELP_PAGE], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_work_item_leftovers(doc):
    text = doc.read_text(encoding="utf-8")
    found = re.findall(r"issue ?[0-9]+|round [0-9]+", text, flags=re.I)
    assert not found, f"{doc.name} names work items: {found}"
    assert "<!-- section:" not in text, f"{doc.name} keeps a section-owner marker"
