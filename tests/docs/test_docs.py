"""The documentation against the code: generated option tables, the severity table, links, README size."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from medret.corruptions import list_kinds
from medret.errors import MedretError
from medret.listing import GENERATED, markdown, update_docs

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    p
    for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md"), *ROOT.glob("*/*/README.md")]
    if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    out: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            slug, n = _slug(line.lstrip("#")), 0
            while (slug if n == 0 else f"{slug}-{n}") in out:
                n += 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_generated_option_tables_match_the_declarations():
    assert update_docs(ROOT, check=True) == [], "run: python -m medret docs"


def test_a_stale_table_is_found_and_rewritten(tmp_path):
    for rel in GENERATED.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    models = tmp_path / GENERATED["families"]
    models.write_text(models.read_text().replace("| | `variant` |", "| | `variety` |"))
    assert update_docs(tmp_path, check=True) == [GENERATED["families"]]
    assert update_docs(tmp_path) == [GENERATED["families"]]
    assert "| | `variant` | required |" in models.read_text() and update_docs(tmp_path, check=True) == []
    models.write_text(models.read_text().replace("<!-- /medret:families -->", ""))
    with pytest.raises(MedretError, match=r"models\.md: no <!-- medret:families -->"):
        update_docs(tmp_path, check=True)


def test_every_declared_option_is_in_the_tables():
    from medret.models import list_families

    table = markdown("families")
    for name, family in list_families().items():
        if name in table:
            assert all(f"| | `{key}` |" in table for key in family.options), name
    assert "| `medclip` | | |" in table and "| | `max_length` | `77` |" in table


def test_the_severity_table_holds_the_declared_parameters():
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    severity = {name: kind for name, kind in list_kinds().items() if kind.severity and kind.name in text}
    assert len(severity) >= 9
    for name, kind in severity.items():
        row = re.search(rf"^\| `{name}` \| [^|]+ \|(.+)\|$", text, re.MULTILINE)
        assert row, f"docs/protocol.md has no severity row for {name}"
        values = [float(v.strip().lstrip("+")) for v in row.group(1).split("|")]
        assert values == pytest.approx(kind.parameters), name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    broken = []
    for match in LINK.finditer(page.read_text(encoding="utf-8")):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, broken


def test_readme_is_short():
    assert (ROOT / "README.md").stat().st_size < 15_000
