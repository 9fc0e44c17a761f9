"""The documentation stands alone: every relative link resolves, every docs page a help text or
docstring names exists, nothing points outside the repository, the README stays short."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_files():
    return [ROOT / "README.md", ROOT / "tpu" / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def test_relative_links_resolve():
    broken = []
    for md in _markdown_files():
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if path and not (md.parent / path).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_every_docs_page_named_anywhere_exists():
    named = set()
    for base in ("jaxcoders", "experiments", "tpu", "docs"):
        for p in (ROOT / base).rglob("*"):
            if p.suffix in (".py", ".md", ".sh") and p.is_file():
                named |= set(re.findall(r"docs/[A-Za-z0-9_./-]+\.md", p.read_text()))
    named |= set(re.findall(r"docs/[A-Za-z0-9_./-]+\.md", (ROOT / "README.md").read_text()))
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert missing == []


def test_nothing_points_outside_the_repository():
    outside = "../" + "shared"  # the development-only folder beside the clone (spelled so this file has no hit)
    hits = []
    for base in ("jaxcoders", "experiments", "tpu", "docs", "tests"):
        for p in (ROOT / base).rglob("*"):
            if p.suffix in (".py", ".md", ".sh", ".toml") and p.is_file():
                text = p.read_text()
                if outside in text or re.search(r"\bSPEC(\.md)?\b( section| §|\.md)", text):
                    hits.append(str(p.relative_to(ROOT)))
    assert hits == []


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    head = "\n".join(lines[:6])
    assert "make demo" in head and "make test" in head
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
