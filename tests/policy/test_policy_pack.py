"""The default policy pack, rule by rule and at its edges, and the engine's refusals."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_qguard.policy.engine import _OUTPUT, PolicyEngine, PolicyError, _well_formed

PACK = Path(__file__).resolve().parents[2] / "policies"

BASE = {
    "job": {"backend": "fake_brisbane", "shots": 1000, "seed": None, "max_cost": None},
    "backend": {"name": "fake_brisbane", "provider": "fakecloud", "qubits": 127},
    "lint": {"findings": []},
    "cost": {"estimate": 0.65, "currency": "USD"},
    "usage": {"spent_today": 0.0, "jobs_window": 1, "baseline_window": 2},
    "requester": {"user": "ada", "kernel_id": "k1"},
    "workstation_tier": "standard",
}

NOT_LISTED = "backend {b} is not on this policy's list of allowed backends"
SANDBOX = "this workstation is in tier sandbox, where only simulators may run (backend {b} is {t})"
SHOTS = "{n} shots is more than the limit of 100000 per job"
CAP = "the estimated cost, {c} USD, is over the per-job cap of 50.00"
OWN_MAX = "the estimated cost, {c} USD, is over the request's own max_cost of {m}"
BUDGET = "this job would bring today's spending for ada to {t} USD, over the daily budget of 200.00"
BURST = (
    "{n} jobs in the current window is far above the usual {b}; "
    "wait, or ask an admin to raise the limit"
)
KBURST = (
    "kernel {k}: {n} jobs in the current window is far above its usual {b}; "
    "wait, or ask an admin to raise the limit"
)
TWO = "tier premium: 2 different people must approve, none of them the requester"


def case(changes: dict) -> dict:
    out = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = out
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return out


def err(msg):
    return {"severity": "error", "code": "x", "message": msg}


def warn(msg):
    return {"severity": "warning", "code": "y", "message": msg}


SIM = {"job.backend": "aer_simulator", "cost.estimate": 0.0}
PREMIUM = {"job.backend": "fake_torino"}
# An agent's token: requester.kind "agent" with its manifest, and its own rate in usage.agent.
AGENT = {
    "requester": {
        "user": "ada",
        "kernel_id": "k1",
        "kind": "agent",
        "agent": "bot",
        "manifest": {
            "backends": ["aer_*", "fake_bris*"],
            "limits": {
                "max_shots": 5000,
                "max_cost_per_job": 1.0,
                "rate": {"jobs": 10, "per_seconds": 3600},
            },
        },
    },
    "usage.agent": {"name": "bot", "per_seconds": 3600, "jobs_window": 3},
}
AGENT_BACKEND = "agent bot may not ask for backend {b}: its manifest allows aer_*, fake_bris*"
AGENT_SHOTS = "agent bot may ask for at most 5000 shots per job, not {n}"
AGENT_CAP = "the estimated cost, {c} USD, is over agent bot's cap of 1.00 per job"
AGENT_RATE = (
    "agent bot has asked for {n} jobs in the last 3600 seconds, its limit; wait, or give it a "
    "manifest with a higher rate"
)

# name: (changes, allow, deny, approvals_required, mfa_required, notes)
CASES = {
    "an agent within its manifest": (AGENT, True, [], 1, False, []),
    "an agent on a simulator its manifest allows": ({**AGENT, **SIM}, True, [], 0, False, []),
    "an agent asks for a backend its manifest does not list": (
        {**AGENT, **PREMIUM},
        False,
        [AGENT_BACKEND.format(b="fake_torino")],
        2,
        True,
        [TWO],
    ),
    "an agent at its shot limit": ({**AGENT, "job.shots": 5000}, True, [], 1, False, []),
    "an agent over its shot limit": (
        {**AGENT, "job.shots": 5001},
        False,
        [AGENT_SHOTS.format(n=5001)],
        1,
        False,
        [],
    ),
    "an agent over its cost cap": (
        {**AGENT, "cost.estimate": 1.25},
        False,
        [AGENT_CAP.format(c="1.25")],
        1,
        False,
        [],
    ),
    "an agent one job below its rate": (
        {**AGENT, "usage.agent": {"name": "bot", "per_seconds": 3600, "jobs_window": 9}},
        True,
        [],
        1,
        False,
        [],
    ),
    "an agent at its rate": (
        {**AGENT, "usage.agent": {"name": "bot", "per_seconds": 3600, "jobs_window": 10}},
        False,
        [AGENT_RATE.format(n=10)],
        1,
        False,
        [],
    ),
    "a user is not held to an agent's manifest": (
        {"job.shots": 50000, "usage.agent": {"jobs_window": 99}},
        True,
        [],
        1,
        False,
        [],
    ),
    "simulator runs without approval": (SIM, True, [], 0, False, []),
    "hardware needs one approval": ({}, True, [], 1, False, []),
    "premium needs two approvers and mfa": (PREMIUM, True, [], 2, True, [TWO]),
    "unknown backend": (
        {"job.backend": "ibm_kyiv"},
        False,
        [NOT_LISTED.format(b="ibm_kyiv")],
        1,
        False,
        [],
    ),
    "unknown backend on a sandbox workstation": (
        {"job.backend": "nope", "workstation_tier": "sandbox"},
        False,
        [NOT_LISTED.format(b="nope")],
        1,
        False,
        [],
    ),
    "shots at the limit": ({"job.shots": 100000}, True, [], 1, False, []),
    "shots one over the limit": (
        {"job.shots": 100001},
        False,
        [SHOTS.format(n=100001)],
        1,
        False,
        [],
    ),
    "shots over the limit on a simulator": (
        {**SIM, "job.shots": 200000},
        False,
        [SHOTS.format(n=200000)],
        0,
        False,
        [],
    ),
    "one shot": ({"job.shots": 1}, True, [], 1, False, []),
    "cost at the per-job cap": ({"cost.estimate": 50.0}, True, [], 1, False, []),
    "cost just over the per-job cap": (
        {"cost.estimate": 50.01},
        False,
        [CAP.format(c="50.01")],
        1,
        False,
        [],
    ),
    "cost far over cap and budget": (
        {"cost.estimate": 250.0},
        False,
        [CAP.format(c="250.00"), BUDGET.format(t="250.00")],
        1,
        False,
        [],
    ),
    "own max_cost exceeded": (
        {"job.max_cost": 0.5},
        False,
        [OWN_MAX.format(c="0.65", m="0.50")],
        1,
        False,
        [],
    ),
    "own max_cost met exactly": ({"job.max_cost": 0.65}, True, [], 1, False, []),
    "own max_cost above estimate": ({"job.max_cost": 10}, True, [], 1, False, []),
    "own max_cost zero on a free simulator": ({**SIM, "job.max_cost": 0}, True, [], 0, False, []),
    "no max_cost given": ({"job.max_cost": None}, True, [], 1, False, []),
    "budget reached exactly": ({"usage.spent_today": 199.35}, True, [], 1, False, []),
    "budget exceeded": (
        {"usage.spent_today": 199.5},
        False,
        [BUDGET.format(t="200.15")],
        1,
        False,
        [],
    ),
    "budget exceeded on premium": (
        {**PREMIUM, "usage.spent_today": 199.9},
        False,
        [BUDGET.format(t="200.55")],
        2,
        True,
        [TWO],
    ),
    "budget spent but simulator is free": (
        {**SIM, "usage.spent_today": 200.0},
        True,
        [],
        0,
        False,
        [],
    ),
    "sandbox workstation, hardware": (
        {"workstation_tier": "sandbox"},
        False,
        [SANDBOX.format(b="fake_brisbane", t="hardware")],
        1,
        False,
        [],
    ),
    "sandbox workstation, premium": (
        {**PREMIUM, "workstation_tier": "sandbox"},
        False,
        [SANDBOX.format(b="fake_torino", t="premium")],
        2,
        True,
        [TWO],
    ),
    "sandbox workstation, simulator": (
        {**SIM, "workstation_tier": "sandbox"},
        True,
        [],
        0,
        False,
        [],
    ),
    "unknown workstation tier": (
        {"workstation_tier": "lab-7"},
        False,
        ["unknown workstation tier lab-7"],
        1,
        False,
        [],
    ),
    "lint error": (
        {"lint.findings": [err("the circuit uses 130 qubits; fake_brisbane has 127")]},
        False,
        ["lint: the circuit uses 130 qubits; fake_brisbane has 127"],
        1,
        False,
        [],
    ),
    "two lint errors": (
        {"lint.findings": [err("no measurements"), err("2 unbound parameters")]},
        False,
        ["lint: 2 unbound parameters", "lint: no measurements"],
        1,
        False,
        [],
    ),
    "lint warning only": (
        {"lint.findings": [warn("depth 900 after transpiling")]},
        True,
        [],
        1,
        False,
        ["lint: depth 900 after transpiling"],
    ),
    "lint info is ignored": (
        {"lint.findings": [{"severity": "info", "code": "z", "message": "fine"}]},
        True,
        [],
        1,
        False,
        [],
    ),
    "lint error and warning": (
        {"lint.findings": [err("no measurements"), warn("deep")]},
        False,
        ["lint: no measurements"],
        1,
        False,
        ["lint: deep"],
    ),
    "burst at the floor": (
        {"usage.jobs_window": 20, "usage.baseline_window": 0},
        True,
        [],
        1,
        False,
        [],
    ),
    "burst just over the floor": (
        {"usage.jobs_window": 21, "usage.baseline_window": 0},
        False,
        [BURST.format(n=21, b=0)],
        1,
        False,
        [],
    ),
    "busy but within five times the baseline": (
        {"usage.jobs_window": 50, "usage.baseline_window": 10},
        True,
        [],
        1,
        False,
        [],
    ),
    "a baseline whose limit has more digits than the floor": (
        # five times 30 is 150, over the floor of 20 (as text, "150" sorts below "20")
        {"usage.jobs_window": 100, "usage.baseline_window": 30},
        True,
        [],
        1,
        False,
        [],
    ),
    "burst over five times the baseline": (
        {"usage.jobs_window": 51, "usage.baseline_window": 10},
        False,
        [BURST.format(n=51, b=10)],
        1,
        False,
        [],
    ),
    "burst on a simulator is denied too": (
        {**SIM, "usage.jobs_window": 400, "usage.baseline_window": 3},
        False,
        [BURST.format(n=400, b=3)],
        0,
        False,
        [],
    ),
    "kernel at the floor": (
        {"usage.kernel": {"id": "k1", "jobs_window": 20, "baseline_window": 0}},
        True,
        [],
        1,
        False,
        [],
    ),
    "new kernel bursting while its user's baseline is high": (
        {
            "usage.jobs_window": 21,
            "usage.baseline_window": 10,
            "usage.kernel": {"id": "k1", "jobs_window": 21, "baseline_window": 0},
        },
        False,
        [KBURST.format(k="k1", n=21, b=0)],
        1,
        False,
        [],
    ),
    "kernel busy within five times its own baseline": (
        {
            "usage.jobs_window": 30,
            "usage.baseline_window": 10,
            "usage.kernel": {"id": "k1", "jobs_window": 30, "baseline_window": 6},
        },
        True,
        [],
        1,
        False,
        [],
    ),
    "everything wrong at once": (
        {
            "job.shots": 500000,
            "cost.estimate": 175.0,
            "usage.spent_today": 100.0,
            "workstation_tier": "sandbox",
            "lint.findings": [err("no measurements")],
        },
        False,
        sorted(
            [
                SHOTS.format(n=500000),
                CAP.format(c="175.00"),
                BUDGET.format(t="275.00"),
                SANDBOX.format(b="fake_brisbane", t="hardware"),
                "lint: no measurements",
            ]
        ),
        1,
        False,
        [],
    ),
    "premium with a lint warning": (
        {**PREMIUM, "lint.findings": [warn("shallow")]},
        True,
        [],
        2,
        True,
        ["lint: shallow", TWO],
    ),
    "premium cost over own max": (
        {**PREMIUM, "cost.estimate": 12.8, "job.max_cost": 10},
        False,
        [OWN_MAX.format(c="12.80", m="10.00")],
        2,
        True,
        [TWO],
    ),
    "hardware with seed and max shots": (
        {"job.seed": 7, "job.shots": 100000},
        True,
        [],
        1,
        False,
        [],
    ),
    "simulator with a lint error": (
        {**SIM, "lint.findings": [err("the circuit has no measurements")]},
        False,
        ["lint: the circuit has no measurements"],
        0,
        False,
        [],
    ),
    "heavy user on hardware near budget": (
        {"usage.spent_today": 150.0, "cost.estimate": 49.99},
        True,
        [],
        1,
        False,
        [],
    ),
}


@pytest.fixture(scope="module")
def engine():
    return PolicyEngine(PACK)


def test_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_pack(engine, name):
    changes, allow, deny, approvals, mfa, notes = CASES[name]
    d = engine.decide(case(changes))
    assert (d.allow, d.deny, d.approvals_required, d.mfa_required, d.notes) == (
        allow,
        sorted(deny),
        approvals,
        mfa,
        sorted(notes),
    )
    assert d.policy_version == engine.version and len(engine.version) == 64


def _pack(tmp_path, rego: str | None = None, data: str | None = None) -> Path:
    pack = tmp_path / "pack"
    shutil.copytree(PACK, pack)
    if rego is not None:
        (pack / "extra.rego").write_text(rego)
    if data is not None:
        (pack / "data.json").write_text(data)
    return pack


@pytest.mark.parametrize(
    "call,why",
    [
        ('http.send({"method": "get", "url": "http://x"})', "makes network calls"),
        ("opa.runtime()", "reads the OPA runtime environment"),
        ("time.now_ns()", "reads the clock"),
        ('net.lookup_ip_addr("x")', "makes network calls"),
        ('rand.intn("x", 10)', "draws random numbers"),
    ],
)
def test_packs_that_reach_outside_are_refused_at_load(tmp_path, call, why):
    rego = f"package qguard.extra\n\nimport rego.v1\n\nx := {call}\n"
    with pytest.raises(PolicyError) as info:
        PolicyEngine(_pack(tmp_path, rego))
    builtin = call.split("(")[0]
    assert str(info.value) == (
        f"extra.rego:5 uses {builtin}, which {why}: a qguard policy must decide from its input "
        "and its own data only"
    )


def test_a_mention_in_a_comment_or_string_is_not_a_call(tmp_path):
    rego = (
        "package qguard.extra\n\nimport rego.v1\n\n"
        '# never http.send(...) here\nx := "time.now_ns()"\n'
    )
    PolicyEngine(_pack(tmp_path, rego))


def test_a_pack_that_does_not_compile_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="the pack does not compile"):
        PolicyEngine(_pack(tmp_path, "package qguard.extra\n\nx := := 1\n"))


def test_bad_data_json_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="data.json: not valid JSON"):
        PolicyEngine(_pack(tmp_path, data="{not json"))


def test_an_undefined_result_is_a_deny(tmp_path):
    pack = tmp_path / "undef"
    pack.mkdir()
    (pack / "p.rego").write_text(
        'package qguard.decision\n\nimport rego.v1\n\ndecision := {"allow": true} if false\n'
    )
    d = PolicyEngine(pack).decide(BASE)
    assert (d.allow, d.deny) == (False, ["the policy gave no decision for this job (undefined)"])


def test_a_malformed_result_is_a_deny(tmp_path):
    pack = tmp_path / "bad"
    pack.mkdir()
    (pack / "p.rego").write_text(
        'package qguard.decision\n\ndecision := {"allow": true, "deny": [], '
        '"approvals_required": "none", "mfa_required": false}\n'
    )
    d = PolicyEngine(pack).decide(BASE)
    assert d.allow is False
    assert d.deny == ["the policy's decision is malformed: 'none' is not of type 'integer'"]


def test_allow_without_reason_still_explains(tmp_path):
    pack = tmp_path / "terse"
    pack.mkdir()
    (pack / "p.rego").write_text(
        'package qguard.decision\n\ndecision := {"allow": false, "deny": [], '
        '"approvals_required": 1, "mfa_required": false}\n'
    )
    d = PolicyEngine(pack).decide(BASE)
    assert (d.allow, d.deny) == (False, ["the policy did not allow this job"])


def test_an_evaluation_error_is_a_deny(tmp_path):
    pack = tmp_path / "boom"
    pack.mkdir()
    (pack / "p.rego").write_text(
        'package qguard.decision\n\nimport rego.v1\n\ndecision := {"allow": true, "deny": [], '
        '"approvals_required": to_number(input.job.backend), "mfa_required": false}\n'
    )
    d = PolicyEngine(pack).decide(BASE)
    assert d.allow is False and len(d.deny) == 1
    assert d.deny[0].startswith(("the policy failed to evaluate", "the policy gave no decision"))


def test_reload_picks_up_an_edit_and_keeps_the_last_good_pack(tmp_path):
    pack = _pack(tmp_path)
    engine = PolicyEngine(pack)
    v1 = engine.version
    assert engine.reload_if_changed() is False
    data = (pack / "data.json").read_text().replace('"max_shots": 100000', '"max_shots": 10')
    (pack / "data.json").write_text(data)
    assert engine.reload_if_changed() is True
    assert engine.version != v1
    assert engine.decide(case({"job.shots": 11})).deny == [
        "11 shots is more than the limit of 10 per job"
    ]
    (pack / "decision.rego").write_text("package qguard.decision\n\nthis is not rego\n")
    with pytest.raises(PolicyError):
        engine.reload_if_changed()
    assert engine.decide(case({"job.shots": 11})).deny == [
        "11 shots is more than the limit of 10 per job"
    ]


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 12),
    st.floats(allow_nan=False, width=32),
    st.text(max_size=3),
    st.lists(st.one_of(st.text(max_size=3), st.integers(0, 3)), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["allow", "deny", "approvals_required", "mfa_required", "notes", "x"]),
        _values,
    )
)
def test_fast_output_check_agrees_with_the_schema(result):
    # The hot path checks the decision by hand; it must accept exactly what the schema accepts.
    assert _well_formed(result) == _OUTPUT.is_valid(result)


def test_max_is_refused_while_regopy_orders_numbers_as_text(tmp_path):
    from jupyter_qguard.policy.engine import numbers_ordered_as_text

    pack = tmp_path / "maxed"
    pack.mkdir()
    (pack / "p.rego").write_text(
        "package qguard.decision\n\n# max() in a comment is fine\n"
        "limit := max([data.limits.burst_floor, 3])\n"
    )
    if not numbers_ordered_as_text():
        # a fixed regopy: the pack loads and max() is numeric
        assert PolicyEngine(pack).version
        return
    with pytest.raises(PolicyError) as info:
        PolicyEngine(pack)
    assert str(info.value) == (
        "p.rego:4 uses max(), which the installed regopy gets wrong for numbers "
        "(max([3, 15]) gives 3): compare with < and > instead"
    )


def test_the_installed_pack_is_this_pack():
    # The server's default policy_dir is the copy `pip install` puts under sys.prefix; an edit
    # of policies/ reaches it only by installing again (`make test` does).
    import sys

    installed = Path(sys.prefix) / "share" / "jupyter_qguard" / "policies"
    for source in sorted(p for p in PACK.rglob("*") if p.is_file()):
        copy_ = installed / source.relative_to(PACK)
        assert copy_.is_file() and copy_.read_bytes() == source.read_bytes(), (
            f"{copy_} differs from {source}: run `pip install -e .` again"
        )


# Team mode's budgets: a person's own line (daily_budget_by_user) over the common one, and hub
# groups (usage.groups: what all members spent today) held to daily_budget_per_group.
TEAM_DATA = {
    "limits": {"daily_budget_by_user": {"ada": 10.0}, "daily_budget_per_group": {"physics": 5.0}}
}
GROUP = (
    "this job would bring today's spending of group physics to {t} USD, over its daily budget "
    "of 5.00"
)
TEAM_CASES = {
    "within her own line": ({"usage.spent_today": 9.0}, []),
    "over her own line, under the common budget": (
        {"usage.spent_today": 9.5},
        [
            "this job would bring today's spending for ada to 10.15 USD, over the daily "
            "budget of 10.00"
        ],
    ),
    "someone without a line keeps the common budget": (
        {"usage.spent_today": 150.0, "requester.user": "bo"},
        [],
    ),
    "the group within its budget": ({"usage.groups": {"physics": {"spent_today": 4.35}}}, []),
    "the group over its budget (others spent it)": (
        {"usage.groups": {"physics": {"spent_today": 4.5}}},
        [GROUP.format(t="5.15")],
    ),
    "a group without a budget line is not held": (
        {"usage.groups": {"chemistry": {"spent_today": 1000.0}}},
        [],
    ),
    "both the person and the group over": (
        {"usage.spent_today": 9.5, "usage.groups": {"physics": {"spent_today": 4.5}}},
        [
            "this job would bring today's spending for ada to 10.15 USD, over the daily "
            "budget of 10.00",
            GROUP.format(t="5.15"),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(TEAM_CASES))
def test_team_budgets(name):
    engine = PolicyEngine(PACK, TEAM_DATA)
    changes, deny = TEAM_CASES[name]
    d = engine.decide(case(changes))
    assert (d.allow, d.deny) == (not deny, sorted(deny))
