"""The generic registry: registration, look-up with the nearest name, listing order, discovery."""

from __future__ import annotations

import sys

import pytest

from clinic.errors import ClinicError
from clinic.registry import Registry


def test_lookup_suggests_the_nearest_name_and_lists_the_choices():
    r = Registry("colour")
    r.register("red", 1)
    r.register("green", 2)
    assert r.get("red") == 1 and r["green"] == 2 and "red" in r and "blue" not in r
    with pytest.raises(ClinicError, match=r"^unknown colour 'gren' \(did you mean 'green'\?\); choose one of red, green$"):
        r.get("gren")
    with pytest.raises(ClinicError, match=r"^unknown colour 'x' in paint; choose one of red, green$"):
        r.check("x", " in paint")
    assert r.get("x", None) is None


def test_listing_order_decorator_and_twice_registered_names():
    r = Registry("shape")

    @r.register("square")
    class Square:
        pass

    r.register("circle", "c", order=0)
    r.register("line", "l")
    assert r.get("square") is Square
    assert r.names() == ["circle", "square", "line"]  # ordered first, then in registration order
    assert Registry("s", sort=True).names() == []
    with pytest.raises(ValueError, match="registered twice"):
        r.register("line", "other")
    assert dict(r.filter(lambda v: isinstance(v, str))) == {"circle": "c", "line": "l"}


def test_discovery_imports_every_module_of_the_package(tmp_path, monkeypatch):
    """A module dropped into the package registers itself: no list of modules to edit."""
    pkg = tmp_path / "plugins_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from clinic.registry import Registry\nREG = Registry('plugin', package=__name__)\n")
    (pkg / "alpha.py").write_text("from . import REG\nREG.register('alpha', 1)\n")
    (pkg / "beta.py").write_text("from . import REG\nREG.register('beta', 2)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from plugins_for_test import REG

        assert "plugins_for_test.alpha" not in sys.modules  # nothing imported before the first look-up
        assert REG.names() == ["alpha", "beta"] and len(REG) == 2
    finally:
        for name in [m for m in sys.modules if m.startswith("plugins_for_test")]:
            del sys.modules[name]
