"""``docs/reliability.md`` maps F1–F24 (docs/reliability.md section 5) to tests; this keeps the table true.

Every F1..F24 row appears once, every test it names is defined somewhere under ``tests/`` (by name, so a test
file may move), statuses are known words, and the closing count matches the table.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "docs" / "reliability.md"
ROW = re.compile(r"^\| (F\d+) \| [^|]+ \| ([^|]+) \| (covered|partial|none) \|$")


def _rows() -> list[tuple[str, list[str], str]]:
    rows = []
    for line in CATALOGUE.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows.append((match.group(1), re.findall(r"`(test_\w+)`", match.group(2)), match.group(3)))
    return rows


def catalogue_tests() -> set[str]:
    """Every test the catalogue names (``make test-faults`` runs them)."""
    return {name for _, names, _ in _rows() for name in names}


def test_every_fault_is_listed_once():
    assert [f for f, _, _ in _rows()] == [f"F{i}" for i in range(1, 25)]


def test_every_named_test_exists_and_covered_rows_name_one():
    defined = Counter(
        re.findall(
            r"^(?:async )?def (test_\w+)\(",
            "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py")),
            re.MULTILINE,
        )
    )
    missing = sorted(name for name in catalogue_tests() if not defined[name])
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    assert all(names for _, names, status in _rows() if status != "none")


def test_closing_count_matches_the_table():
    statuses = Counter(status for _, _, status in _rows())
    text = CATALOGUE.read_text()
    expected = f"Covered: {statuses['covered']} of 24 (partial: {statuses['partial']}, none: {statuses['none']})."
    assert expected in text, expected


if __name__ == "__main__":  # `make test-faults`: the catalogue's tests as a pytest -k expression
    print(" or ".join(sorted(catalogue_tests())))
