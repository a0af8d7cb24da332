"""Named callables: registration, lookup through parents, no silent shadowing."""

from __future__ import annotations

import pytest

from openxpki_py.workflow import ActivityContext, Registry


def test_child_registry_inherits_and_must_ask_to_override() -> None:
    parent, child = Registry(), None
    child = Registry(parent=parent)

    @parent.activity()
    def issue(ctx: ActivityContext) -> None: ...

    assert child.get("activity", "issue") is issue
    with pytest.raises(ValueError, match="inherited .* override=True"):
        child.register("activity", "issue", lambda ctx: None)

    @child.activity("issue", override=True)
    def issue_with_hook(ctx: ActivityContext) -> None: ...

    assert child.get("activity", "issue") is issue_with_hook
    assert parent.get("activity", "issue") is issue
    with pytest.raises(ValueError, match="already registered"):
        child.register("activity", "issue", lambda ctx: None, override=True)
    with pytest.raises(KeyError, match="no condition named 'x'"):
        child.get("condition", "x")
    assert list(child.names("activity")) == ["issue"]


def test_reads_only_is_per_registration() -> None:
    """Declared with the activity; inherited, copied by include, and dropped by an override that does not say it."""
    shipped = Registry()
    shipped.activity("look", reads_only=True)(lambda ctx: None)
    shipped.activity("write")(lambda ctx: None)
    assert shipped.reads_only("look") and not shipped.reads_only("write") and not shipped.reads_only("missing")
    site = Registry(parent=shipped)
    assert site.reads_only("look")
    site.activity("look", override=True)(lambda ctx: None)  # a site's own version writes, perhaps
    assert not site.reads_only("look")
    engine_registry = Registry()
    engine_registry.include(shipped)
    assert engine_registry.reads_only("look") and not engine_registry.reads_only("write")
