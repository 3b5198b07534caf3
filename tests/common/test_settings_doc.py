"""The README's table of environment variables and the settings module say the same thing.

The table's default column is ``unset`` for a setting whose default is empty (None, "" or no items), else
the value as one would write it in the environment; a row names one variable.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cgpo.services.common.settings import variables

README = Path(__file__).resolve().parents[2] / "README.md"
UNSET = "unset"


def readme_table() -> dict[str, str]:
    """Variable → default cell of the table under the README's ``## Configuration`` heading."""
    section = README.read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or cells[0] in ("variable", "") or set(cells[0]) <= {"-"}:
            continue
        names = re.findall(r"`(CGPO_[A-Z0-9_]+)`", cells[0])
        assert len(names) == 1, f"README row {line!r}: one variable per row"
        assert names[0] not in rows, f"README lists {names[0]} twice"
        rows[names[0]] = cells[1]
    return rows


def test_the_table_lists_exactly_the_declared_variables():
    documented, declared = set(readme_table()), set(variables())
    assert not declared - documented, f"missing from the README: {sorted(declared - documented)}"
    assert not documented - declared, f"not settings: {sorted(documented - declared)}"


@pytest.mark.parametrize("name", sorted(variables()))
def test_each_default_is_the_declared_one(name):
    cell, variable = readme_table().get(name), variables()[name]
    if cell is None:
        pytest.skip("not in the README (the test above says so)")
    if variable.default in (None, "", ()):
        assert cell == UNSET, f"{name}: the README says {cell!r}, the default is unset"
        return
    assert cell != UNSET, f"{name}: the README says unset, the default is {variable.default!r}"
    parsed = getattr(variable.settings.from_env({name: cell}), variable.field)
    assert parsed == variable.default, f"{name}: the README says {cell!r}, the default is {variable.default!r}"
