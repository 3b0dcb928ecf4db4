"""The ARD project's own conformance tool against a running relay (interop/ard/run.py), both
modes. Runs when a checkout of github.com/ards-project/ard-spec is named by ``ARD_SPEC``; the
tool is a Python script of its own repository, not a package of any registry."""

from __future__ import annotations

import pytest

from interop.ard import run


@pytest.mark.timeout(120)
def test_ard_conformance_tool_passes_registry_and_manifest(
    capfd: pytest.CaptureFixture[str],
) -> None:
    checkout = run.find_checkout(None)
    if checkout is None:
        pytest.skip("ARD_SPEC names no checkout of ards-project/ard-spec with its conformance tool")
    assert run.run(checkout) == 0
    out = capfd.readouterr().out
    assert out.count("CONFORMANCE STATUS: PASS") == 2
