"""The public surface: `__all__` is honest and sorted, every public name resolves, and importing is cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ftcallback


def test_all_is_sorted_and_every_name_resolves():
    assert ftcallback.__all__ == sorted(ftcallback.__all__)
    for name in ftcallback.__all__:
        assert getattr(ftcallback, name) is not None, name
    assert set(dir(ftcallback)) >= set(ftcallback.__all__)


def test_no_public_module_besides_testing_and_cli():
    import pkgutil

    public = sorted(m.name for m in pkgutil.iter_modules(ftcallback.__path__) if not m.name.startswith("_"))
    assert public == ["cli", "testing"]


@pytest.mark.parametrize(
    ("name", "module", "attribute"),
    [
        ("Budget", "ftcallback._budget", "Budget"),
        ("EfficiencyCallback", "ftcallback._callback", "EfficiencyCallback"),
        ("measure", "ftcallback._measure", "measure"),
        ("shutdown_distributed", "ftcallback._distributed", "shutdown"),
    ],
)
def test_public_names_come_from_their_modules(name, module, attribute):
    import importlib

    assert getattr(ftcallback, name) is getattr(importlib.import_module(module), attribute)


def test_measure_is_the_function_whatever_was_imported_first():
    code = "import ftcallback._measure, ftcallback; from ftcallback import measure; print(callable(measure))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_importing_the_package_does_not_import_torch_or_transformers():
    code = "import sys, ftcallback; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="does_not_exist"):
        ftcallback.does_not_exist  # noqa: B018


def test_errors_are_named_by_their_public_path():
    assert ftcallback.ConfigError.__module__ == "ftcallback"
    assert issubclass(ftcallback.ConfigError, ValueError)


def test_version_matches_metadata():
    from importlib.metadata import version

    assert ftcallback.__version__ == version("ftcallback")


def test_all_lists_exactly_the_lazy_exports():
    assert set(ftcallback.__all__) == {*ftcallback._EXPORTS, "__version__"}
