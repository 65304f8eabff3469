# The qguard broker as the JupyterHub service `qguard` (team mode): /etc/qguard/broker_config.py.
#
# Read by the service (`jupyter qguard broker --hub --config=/etc/qguard/broker_config.py`, which
# the hub starts) and by every command run for it, as the service's account and with the same
# --config: `jupyter qguard credentials set|list|delete`, `jupyter qguard mfa enroll --user NAME`,
# `jupyter qguard jobs`, `jupyter qguard audit verify`, ... Settings are the QGuardApp traits of
# the desktop extension (README, "Configuration"), plus QGuardBrokerService for the service.
#
# No secret is written here. The database password and the keyring password come from the
# environment: QGUARD_DB_PASSWORD and QGUARD_KEYRING_PASSWORD, which the hub passes on to the
# service (on Kubernetes from a Secret, see z2jh-values.yaml). Without QGUARD_DB_PASSWORD, libpq
# reads ~/.pgpass of the service's account. See docs/team-mode.md.

import os
from urllib.parse import quote

c = get_config()  # noqa: F821

# -- state ------------------------------------------------------------------------------------

# The audit log (<state_dir>/audit) and the reproducibility bundles (<state_dir>/bundles). The
# witness copy of the newest signed checkpoint goes to <state_dir>-witness (/srv/qguard-witness);
# put it on another disk, or set c.QGuardApp.audit_witness_dir.
c.QGuardApp.state_dir = "/srv/qguard"

# -- the store: PostgreSQL (pip install "jupyter_qguard[team]" brings psycopg) ----------------

# QGUARD_DB_URL, when set, is used as it is. Otherwise: database and role `qguard` on
# QGUARD_DB_HOST (default db-host), with the password from QGUARD_DB_PASSWORD when set, else from
# what libpq reads itself (~/.pgpass of the service's account, PGPASSWORD).
_db_password = os.environ.get("QGUARD_DB_PASSWORD", "")
_db_login = "qguard" + (":" + quote(_db_password, safe="") if _db_password else "")
_db_host = os.environ.get("QGUARD_DB_HOST", "db-host")
c.QGuardApp.db_url = os.environ.get(
    "QGUARD_DB_URL", f"postgresql+psycopg://{_db_login}@{_db_host}:5432/qguard"
)

# -- the team's provider credentials: only in this keyring ------------------------------------

# A file keyring (keyrings.alt) in a directory only the service's account can read. Set
# credentials with `jupyter qguard credentials set fakecloud --config=/etc/qguard/broker_config.py`
# run as that account. docs/team-mode.md ("The keyring") compares the two choices:
#
# EncryptedKeyring: the file is encrypted with a password (needs pycryptodomex installed). The
# service gets the password from QGUARD_KEYRING_PASSWORD; a command run without it asks for it
# on the terminal. keyrings.alt does not check a password given this way: use the same one for
# the service and every command.
_keyring_options = {"file_path": "/srv/qguard-keyring/keyring.cfg"}
if os.environ.get("QGUARD_KEYRING_PASSWORD"):
    _keyring_options["keyring_key"] = os.environ["QGUARD_KEYRING_PASSWORD"]
c.QGuardApp.keyring_backend = "keyrings.alt.file.EncryptedKeyring"
c.QGuardApp.keyring_backend_options = _keyring_options
#
# PlaintextKeyring: no password; the file is as safe as the volume and its permissions. Only on
# an encrypted volume:
# c.QGuardApp.keyring_backend = "keyrings.alt.file.PlaintextKeyring"
# c.QGuardApp.keyring_backend_options = {"file_path": "/srv/qguard-keyring/keyring.cfg"}

# -- backends: how the service reaches each one -----------------------------------------------

# Whether a backend is allowed, its tier and its price are the policy's (policy_data below).
c.QGuardApp.backends = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    # The loopback fake cloud, for a trial on the service's host (`jupyter qguard fakecloud`,
    # its API key stored with `jupyter qguard credentials set fakecloud`). Remove in production.
    "fake_brisbane": {"provider": "fakecloud", "qubits": 127, "snapshot": "fake_brisbane"},
    "fake_torino": {"provider": "fakecloud", "qubits": 133, "snapshot": "fake_torino"},
    # IBM Quantum through qiskit-ibm-runtime, with the `ibm` credential (an IBM Cloud API key:
    # `jupyter qguard credentials set ibm`). `snapshot` is the calibration snapshot used for lint
    # and the preflight simulation.
    "ibm_torino": {"provider": "ibm", "qubits": 133, "snapshot": "fake_torino"},
}
c.FakeCloudProvider.url = "http://127.0.0.1:8765"
c.IBMProvider.channel = "ibm_quantum_platform"
# c.IBMProvider.instance = "crn:v1:bluemix:public:quantum-computing:..."  # your instance

# -- policy -----------------------------------------------------------------------------------

# The installed pack (policies/) by default; c.QGuardApp.policy_dir points at your own.
# policy_data is merged over the pack's data.json (dicts key by key). Tiers of the default pack:
# simulator runs without approval, hardware needs one approval, premium two (distinct people,
# neither of them the requester) and each approver's MFA code. Changing policy_data changes the
# policy version, which voids approvals given before.
c.QGuardApp.policy_data = {
    "backends": {
        "ibm_torino": {
            "tier": "hardware",
            "provider": "ibm",
            # Replace with your contract's price.
            "price": {"model": "per_second", "per_second": 1.60, "currency": "USD"},
        },
    },
    "limits": {
        # Everyone's daily budget, unless daily_budget_by_user names them.
        "daily_budget_per_user": 100.0,
        "daily_budget_by_user": {"alice": 250.0},
        # Hub groups: the jobs of all the group's members together, per day.
        "daily_budget_per_group": {"approvers": 500.0, "students": 150.0},
    },
    # To have hardware jobs approved by someone other than the requester, ask for two approvals:
    # "tiers": {"hardware": {"approvals": 2}},
}

# -- MFA --------------------------------------------------------------------------------------

# Each approver's own TOTP code (enrolled with `jupyter qguard mfa enroll --user NAME`).
c.QGuardApp.mfa_single_user = False

# -- the service ------------------------------------------------------------------------------

# Scopes the service checks (these are the defaults; they must match c.JupyterHub.custom_scopes).
c.QGuardBrokerService.request_scope = "custom:qguard:request"
c.QGuardBrokerService.approve_scope = "custom:qguard:approve"
c.QGuardBrokerService.admin_scope = "custom:qguard:admin"
c.QGuardBrokerService.review_scope = "custom:qguard:review"

# Where people reach the approval pages (<public_url>jobs/<id>; the lab panel links there).
# Default: the service prefix on the hub's origin, /services/qguard/. With
# c.JupyterHub.subdomain_host = "https://example.org", JupyterHub 5 serves the service on its
# own origin; give it here so that approval pages never share an origin with users' servers:
# c.QGuardBrokerService.public_url = "https://qguard--service.example.org/services/qguard/"
c.QGuardBrokerService.public_url = "/services/qguard/"
