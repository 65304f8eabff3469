"""The team broker's approval pages: plain HTML, every value escaped, no script.

A person reviews a job here and approves or denies it with a form: the digest they saw goes
with the approval (a request changed since is refused), and an MFA code where the policy asks.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;
color:#1b1b1b;background:#fff}
@media (prefers-color-scheme:dark){body{color:#e8e8e8;background:#161616}
a{color:#8ab4ff}table,td,th,pre{border-color:#444}}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.35rem;
text-align:left;vertical-align:top}pre{overflow:auto;border:1px solid #ddd;padding:.6rem}
.notice{padding:.6rem;border-left:4px solid #2e7d32}.error{padding:.6rem;
border-left:4px solid #c62828}form{margin:.8rem 0}label{display:block;margin:.4rem 0}
button{font:inherit;padding:.35rem 1rem}dt{font-weight:600}dd{margin:0 0 .5rem 0}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _requester(r: dict[str, Any]) -> str:
    if r.get("kind") == "agent":
        return f"{r.get('agent')} (agent of {r.get('user')})"
    return str(r.get("user"))


def error(status: int, message: str) -> str:
    return _page(
        f"qguard: {status}",
        f"<h1>{status}</h1><p class='error' role='alert'>{escape(str(message))}</p>",
    )


def queue(me: str, jobs: list[dict[str, Any]], *, can_approve: bool) -> str:
    rows = "".join(
        "<tr>"
        f"<td><a href='jobs/{escape(j['id'])}'>{escape(j['id'][:8])}</a></td>"
        f"<td>{escape(_requester(j['requester']))}</td>"
        f"<td>{escape(j['backend'])}</td><td>{j['shots']}</td>"
        f"<td>{escape(_money(j))}</td>"
        f"<td>{j.get('approvals_given', 0)} of "
        f"{(j.get('decision') or {}).get('approvals_required', 1)}</td>"
        f"<td>{escape(j['created_at'])}</td></tr>"
        for j in jobs
    )
    what = "the team's requests" if can_approve else "your requests"
    table = (
        "<table><thead><tr><th>job</th><th>requester</th><th>backend</th><th>shots</th>"
        "<th>cost</th><th>approvals</th><th>asked at</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if jobs
        else "<p>No request is waiting for approval.</p>"
    )
    return _page(
        "qguard: waiting for approval",
        f"<h1>Waiting for approval</h1><p>Signed in as {escape(me)}; {what}.</p>{table}",
    )


def _money(job: dict[str, Any]) -> str:
    cost = (job.get("decision") or {}).get("cost") or {}
    if cost.get("estimate") is None:
        return "—"
    return f"{float(cost['estimate']):.2f} {cost.get('currency', 'USD')}"


def _budget(budget: dict[str, Any]) -> str:
    try:
        spent, daily = float(budget["spent_today"]), float(budget["daily"])
    except (KeyError, TypeError, ValueError):
        return "—"
    return f"{spent:.2f} of {daily:.2f} {budget.get('currency', 'USD')} spent"


def _fields(pairs: list[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def job(
    job: dict[str, Any],
    review: dict[str, Any],
    *,
    me: str,
    can_approve: bool,
    xsrf: str,
    notice: str = "",
    error: str = "",
) -> str:
    decision = job.get("decision") or {}
    needed = decision.get("approvals_required", 1)
    preflight = decision.get("preflight") or {}
    budget = review.get("budget") or {}
    approvers = ", ".join(escape(a["approver"]) for a in job.get("approvals", [])) or "none yet"
    parts = [f"<h1>Job {escape(job['id'][:8])} — {escape(job['state'])}</h1>"]
    if notice:
        parts.append(f"<p class='notice' role='status'>{escape(notice)}</p>")
    if error:
        parts.append(f"<p class='error' role='alert'>{escape(error)}</p>")
    parts.append(
        _fields(
            [
                ("requester", escape(_requester(job["requester"]))),
                ("notebook", escape(str(job["requester"].get("notebook") or "—"))),
                ("backend", f"{escape(job['backend'])} (tier {escape(str(decision.get('tier')))})"),
                ("shots", str(job["shots"])),
                ("estimated cost", escape(_money(job))),
                ("requester's budget today", escape(_budget(budget))),
                ("approvals", f"{job.get('approvals_given', 0)} of {needed}: {approvers}"),
                ("policy notes", escape("; ".join(decision.get("notes") or [])) or "—"),
                ("digest", f"<code>{escape(job['digest'])}</code>"),
            ]
        )
    )
    if review.get("drawing"):
        parts.append(f"<h2>Circuit</h2><pre>{escape(review['drawing'])}</pre>")
    if preflight.get("counts"):
        counts = json.dumps(preflight["counts"], sort_keys=True)
        parts.append(
            f"<h2>Simulated first ({preflight.get('shots')} shots)</h2><pre>{escape(counts)}</pre>"
        )
    elif preflight.get("skipped"):
        parts.append(f"<h2>Simulation</h2><p>{escape(preflight['skipped'])}</p>")
    if review.get("source"):
        # The kernel's own text, sent beside the program: nothing checks it against what runs.
        parts.append(
            "<h2>Source: the kernel's own description, unverified</h2>"
            f"<pre>{escape(review['source'])}</pre>"
        )
    files = "".join(
        f"<li><code>{escape(p)}</code> {escape(h[:12])}…</li>"
        for p, h in sorted(job.get("files", {}).items())
    )
    parts.append(f"<h2>Bound files</h2><ul>{files or '<li>none</li>'}</ul>")
    if job["state"] == "pending_approval" and can_approve:
        otp = (
            "<label>Code from your authenticator app "
            "<input name='otp' inputmode='numeric' autocomplete='one-time-code' "
            "pattern='[0-9]{6,8}' required></label>"
            if decision.get("mfa_required")
            else ""
        )
        own = job["requester"].get("user") == me and needed > 1
        parts.append(
            "<h2>Decide</h2>"
            + (
                "<p class='error'>This job is yours and needs other people's approval.</p>"
                if own
                else ""
            )
            + f"<form method='post'>{xsrf}<input type='hidden' name='action' value='approve'>"
            f"<input type='hidden' name='digest' value='{escape(job['digest'])}'>{otp}"
            "<button type='submit'>Approve</button></form>"
            f"<form method='post'>{xsrf}<input type='hidden' name='action' value='deny'>"
            "<label>Reason <input name='reason' required maxlength='500'></label>"
            "<button type='submit'>Deny</button></form>"
        )
    history = "".join(
        f"<li>{escape(e['at'])}: {escape(str(e.get('from') or 'new'))} → "
        f"{escape(str(e['to']))} by {escape(str(e['actor']))}</li>"
        for e in job.get("events", [])
    )
    if job.get("reason"):
        history += f"<li>reason: {escape(str(job['reason']))}</li>"
    if history:
        parts.append(f"<h2>History</h2><ol>{history}</ol>")
    parts.append("<p><a href='../'>All requests waiting for approval</a></p>")
    return _page(f"qguard: job {job['id'][:8]}", "".join(parts))
