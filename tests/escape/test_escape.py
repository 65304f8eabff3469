"""The escape suite: every probe, in a real agent kernel, with its exact outcome, as root and
as an unprivileged user."""

from __future__ import annotations

import pytest
from probes import PROBES


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_probe(escape_results, probe):
    mode, results = escape_results
    expr, as_root, as_user = PROBES[probe]
    expected = as_root if mode == "root" else as_user
    assert results[probe] == expected, f"{mode}: {probe}: {expr}"


def test_enough_probes():
    assert len(PROBES) >= 60


def test_layers_reported_active(escape_results):
    mode, results = escape_results
    report = results["__sandbox__"]
    for kernel in report["kernels"]:
        active = set(kernel["sandbox"]["active"])
        assert {"env", "nonroot", "landlock", "seccomp", "namespaces", "rlimits"} <= active, kernel
        assert ("idmap" in active) == (mode == "root")


def test_workspace_writes_belong_to_the_workspace_owner(escape_results):
    mode, results = escape_results
    # as root, the kernel's own uid writes through the idmapped mount as the owner
    assert results["__workspace_owner__"] == results["__workspace_root_owner__"]
