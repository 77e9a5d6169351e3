"""The public surface: `__all__` is honest and sorted, and every public name resolves."""

from __future__ import annotations

import ftcallback


def test_all_is_sorted_and_resolves():
    assert ftcallback.__all__ == sorted(ftcallback.__all__)
    public = {
        n
        for n, v in vars(ftcallback).items()
        if not n.startswith("_") and n != "annotations" and not isinstance(v, type(ftcallback))
    }
    assert public <= set(ftcallback.__all__), public - set(ftcallback.__all__)
    for name in ftcallback.__all__:
        assert getattr(ftcallback, name) is not None, name


def test_public_names_come_from_their_modules():
    from ftcallback.budget import Budget
    from ftcallback.callback import EfficiencyCallback
    from ftcallback.measure import measure

    assert ftcallback.Budget is Budget
    assert ftcallback.EfficiencyCallback is EfficiencyCallback
    assert ftcallback.measure is measure


def test_unknown_attribute_raises_attribute_error():
    try:
        ftcallback.does_not_exist  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_version_matches_metadata():
    from importlib.metadata import version

    assert ftcallback.__version__ == version("ftcallback")
