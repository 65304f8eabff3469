# qguard's default policy pack: who may run what, where, and with how many approvals.
#
# Input (see DESIGN.md, "Policy"): job, backend {name, provider, tier, qubits, price}, lint
# {findings: [{severity, code, message}]}, cost {estimate, currency}, usage {spent_today,
# jobs_window, baseline_window, kernel {id, jobs_window, baseline_window}, agent {name,
# per_seconds, jobs_window}, groups {name: {spent_today}}}, requester {user, kind:
# user|agent, agent, manifest, groups (team mode), ...},
# workstation_tier.
# Output: data.qguard.decision.decision = {allow, deny, approvals_required, mfa_required, notes}.
# Every deny is a sentence a person can act on.
package qguard.decision

import rego.v1

backend_entry := data.backends[input.job.backend]

tier := backend_entry.tier

tier_rules := data.tiers[tier]

limits := data.limits

# -- what is refused, and why ---------------------------------------------------------------

deny contains msg if {
	not backend_entry
	msg := sprintf("backend %s is not on this policy's list of allowed backends", [input.job.backend])
}

deny contains msg if {
	backend_entry
	not tier_rules
	msg := sprintf("backend %s has tier %s, which this policy does not define", [input.job.backend, tier])
}

deny contains msg if {
	tier != "simulator"
	ws := data.workstation_tiers[input.workstation_tier]
	ws.hardware == false
	msg := sprintf("this workstation is in tier %s, where only simulators may run (backend %s is %s)", [input.workstation_tier, input.job.backend, tier])
}

deny contains msg if {
	not data.workstation_tiers[input.workstation_tier]
	msg := sprintf("unknown workstation tier %s", [input.workstation_tier])
}

deny contains msg if {
	input.job.shots > limits.max_shots
	msg := sprintf("%d shots is more than the limit of %d per job", [input.job.shots, limits.max_shots])
}

deny contains msg if {
	input.cost.estimate > limits.max_cost_per_job
	msg := sprintf("the estimated cost, %.2f %s, is over the per-job cap of %.2f", [input.cost.estimate, input.cost.currency, limits.max_cost_per_job])
}

deny contains msg if {
	is_number(input.job.max_cost)
	input.cost.estimate > input.job.max_cost
	msg := sprintf("the estimated cost, %.2f %s, is over the request's own max_cost of %.2f", [input.cost.estimate, input.cost.currency, input.job.max_cost])
}

# A person's daily budget: their own line in daily_budget_by_user, else the common one.
user_budget := b if {
	b := limits.daily_budget_by_user[input.requester.user]
} else := limits.daily_budget_per_user

deny contains msg if {
	total := input.usage.spent_today + input.cost.estimate
	total > user_budget
	msg := sprintf("this job would bring today's spending for %s to %.2f %s, over the daily budget of %.2f", [input.requester.user, total, input.cost.currency, user_budget])
}

# Team mode: usage.groups = {group: {spent_today}} for each hub group of the requester; a
# group with a line in daily_budget_per_group is held to it, whoever of its members spends.
deny contains msg if {
	some group, used in input.usage.groups
	budget := limits.daily_budget_per_group[group]
	total := used.spent_today + input.cost.estimate
	total > budget
	msg := sprintf("this job would bring today's spending of group %s to %.2f %s, over its daily budget of %.2f", [group, total, input.cost.currency, budget])
}

deny contains msg if {
	some finding in input.lint.findings
	finding.severity == "error"
	msg := sprintf("lint: %s", [finding.message])
}

# A burst is a count over the floor and over burst_factor times the usual count. (Two
# comparisons rather than max(): regopy 1.5 orders numbers as text in max/min/sort.)
deny contains msg if {
	input.usage.jobs_window > limits.burst_floor
	input.usage.jobs_window > limits.burst_factor * input.usage.baseline_window
	msg := sprintf("%d jobs in the current window is far above the usual %d; wait, or ask an admin to raise the limit", [input.usage.jobs_window, input.usage.baseline_window])
}

# The same limit for each kernel on its own: a new agent kernel that floods the broker is
# stopped even when its user's overall baseline is high.
deny contains msg if {
	input.usage.kernel.jobs_window > limits.burst_floor
	input.usage.kernel.jobs_window > limits.burst_factor * input.usage.kernel.baseline_window
	msg := sprintf("kernel %s: %d jobs in the current window is far above its usual %d; wait, or ask an admin to raise the limit", [input.usage.kernel.id, input.usage.kernel.jobs_window, input.usage.kernel.baseline_window])
}

# -- agents: what their token's manifest allows (requester.kind == "agent") -----------------
# requester.manifest = {backends: [glob], limits: {max_shots, max_cost_per_job, rate: {jobs,
# per_seconds}}}; usage.agent.jobs_window counts the agent's other jobs in that window.

agent_manifest := input.requester.manifest if input.requester.kind == "agent"

agent_backend_allowed if {
	some pattern in agent_manifest.backends
	glob.match(pattern, [], input.job.backend)
}

deny contains msg if {
	agent_manifest
	not agent_backend_allowed
	# concat, not sprintf: regopy 1.5's sprintf quotes a %s filled from concat() without
	# escaping, which breaks its own JSON output.
	msg := concat("", [
		"agent ", input.requester.agent, " may not ask for backend ", input.job.backend,
		": its manifest allows ", concat(", ", agent_manifest.backends),
	])
}

deny contains msg if {
	input.job.shots > agent_manifest.limits.max_shots
	msg := sprintf("agent %s may ask for at most %d shots per job, not %d", [input.requester.agent, agent_manifest.limits.max_shots, input.job.shots])
}

deny contains msg if {
	input.cost.estimate > agent_manifest.limits.max_cost_per_job
	msg := sprintf("the estimated cost, %.2f %s, is over agent %s's cap of %.2f per job", [input.cost.estimate, input.cost.currency, input.requester.agent, agent_manifest.limits.max_cost_per_job])
}

deny contains msg if {
	input.usage.agent.jobs_window >= agent_manifest.limits.rate.jobs
	msg := sprintf("agent %s has asked for %d jobs in the last %d seconds, its limit; wait, or give it a manifest with a higher rate", [input.requester.agent, input.usage.agent.jobs_window, agent_manifest.limits.rate.per_seconds])
}

# -- what is allowed, and with how many people ----------------------------------------------

default allow := false

allow if count(deny) == 0

default approvals_required := 1

approvals_required := tier_rules.approvals

default mfa_required := false

mfa_required := tier_rules.mfa

notes contains msg if {
	some finding in input.lint.findings
	finding.severity == "warning"
	msg := sprintf("lint: %s", [finding.message])
}

notes contains msg if {
	approvals_required > 1
	msg := sprintf("tier %s: %d different people must approve, none of them the requester", [tier, approvals_required])
}

decision := {
	"allow": allow,
	"deny": deny,
	"approvals_required": approvals_required,
	"mfa_required": mfa_required,
	"notes": notes,
}
