"""Every package in the source tree is in the built distribution: pyproject.toml lists them by
hand, and a package left out works in the editable install and fails in `make dist`."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_steward_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "steward").rglob("__init__.py")}
    found |= {"steward.cli"}  # cli/ installs as steward.cli (package-dir)
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
