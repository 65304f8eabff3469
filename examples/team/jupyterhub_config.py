# jupyter_qguard in team mode: JupyterHub on one host (local-process spawner).
#
# - The broker runs once, as the hub-managed service `qguard` (`jupyter qguard broker --hub`),
#   with the team's store (PostgreSQL), audit log and provider credentials. Its settings are in
#   /etc/qguard/broker_config.py (see broker_config.py next to this file).
# - Each user's server (jupyterhub-singleuser with jupyter_qguard installed) runs the agent
#   kernels and forwards their job requests to the service with its own hub token. It holds no
#   provider credentials.
# - Approval rights are JupyterHub scopes: custom:qguard:request, custom:qguard:approve,
#   custom:qguard:admin, and custom:qguard:review (the team's queue, read only: the one
#   approvers' servers carry).
#
# Start: `jupyterhub -f /etc/jupyterhub/jupyterhub_config.py` as root (the local-process spawner
# starts each user's server as that user's system account). See docs/team-mode.md.

import os
import pwd
from typing import Any

c = get_config()  # noqa: F821

# -- the hub ----------------------------------------------------------------------------------

c.JupyterHub.bind_url = "http://:8000"
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
# The hub's own database. It can live on the same PostgreSQL server as qguard's store, in a
# database and role of its own (password in ~/.pgpass of the hub's account, or PGPASSWORD):
# c.JupyterHub.db_url = "postgresql://jupyterhub@db-host:5432/jupyterhub"
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"

# -- who can log in ---------------------------------------------------------------------------

# REPLACE "dummy" WITH YOUR AUTHENTICATOR (oauthenticator, ldapauthenticator, "pam", ...).
# The dummy authenticator lets anyone log in as any allowed user: for a trial only.
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {"alice", "bob", "carol"}
c.Authenticator.admin_users = {"carol"}

# -- user servers -----------------------------------------------------------------------------

# The default local-process spawner: each server runs as the user's system account, from
# jupyterhub-singleuser with jupyter_qguard installed in the same environment.
# c.JupyterHub.spawner_class = "localprocess"

# The server's root directory is ~/work, not the home directory: the extension keeps its local
# state (change history, snapshots, local audit of kernel events) under
# ~/.local/share/jupyter/qguard and refuses to start when that is inside the root directory.
c.Spawner.notebook_dir = "~/work"


def _make_work_dir(spawner: Any) -> None:
    """Create ~/work, owned by the user, before their server starts (the server refuses a root
    directory that does not exist)."""
    account = pwd.getpwnam(spawner.user.name)
    path = os.path.join(account.pw_dir, "work")
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o755)
        if os.geteuid() == 0:
            os.chown(path, account.pw_uid, account.pw_gid)


c.Spawner.pre_spawn_hook = _make_work_dir

# Where each user's server sends its agent kernels' job requests: the service's URL as the
# servers reach it, with the service prefix. Here the direct address (the service's `url` below).
c.Spawner.environment = {
    "QGUARD_TEAM_BROKER_URL": "http://127.0.0.1:10101/services/qguard/",
}

# The scopes of each server's own hub token (JUPYTERHUB_API_TOKEN). The first two are
# JupyterHub's defaults for a server; the next two let the server forward its kernels' requests
# to the service as its user. The token stays in the server: agent kernels start with a scrubbed
# environment (no JUPYTERHUB_* variables).
c.Spawner.server_token_scopes = [
    "access:servers!user",
    "users:activity!user",
    "custom:qguard:request",
    "access:services!service=qguard",
    # Only an approver's server gets this one (the hub gives a server's token only scopes its
    # user holds): the team's queue in their lab panel, read only. Never custom:qguard:approve
    # here: whatever runs in a server (an in-server agent's shell tool) can use its token.
    # Approvals are made on the service's pages, signed in.
    "custom:qguard:review",
]

# -- scopes, groups, roles --------------------------------------------------------------------

c.JupyterHub.custom_scopes = {
    "custom:qguard:request": {"description": "Ask the qguard broker to run quantum jobs."},
    "custom:qguard:approve": {"description": "Approve or deny quantum jobs of the team."},
    "custom:qguard:admin": {"description": "Administer the qguard broker."},
    "custom:qguard:review": {"description": "Read the team's queue of quantum jobs."},
}

# Approvers are the members of the hub group `approvers`. load_groups only adds: take someone
# out of the group in the admin page or through the REST API, not by editing this list.
c.JupyterHub.load_groups = {
    "approvers": {"users": ["bob", "carol"]},
}

c.JupyterHub.load_roles = [
    {
        # Every user: their own things, asking the broker for jobs, and signing in to the
        # service's pages (OAuth).
        "name": "user",
        "scopes": ["self", "custom:qguard:request", "access:services!service=qguard"],
    },
    {
        "name": "qguard-approvers",
        "description": "Approve or deny the team's quantum jobs.",
        "groups": ["approvers"],
        "scopes": ["custom:qguard:approve", "custom:qguard:review"],
    },
    {
        "name": "qguard-admins",
        "description": "Administer the qguard broker.",
        "users": ["carol"],
        "scopes": ["custom:qguard:admin"],
    },
    {
        # The service itself: it reads requesters' names and groups (group budgets).
        "name": "qguard-service",
        "description": "What the qguard broker service reads from the hub.",
        "services": ["qguard"],
        "scopes": ["read:users:name", "read:users:groups", "read:groups"],
    },
]

# -- the broker service -----------------------------------------------------------------------

c.JupyterHub.services = [
    {
        "name": "qguard",
        # Where the service listens. The hub's proxy routes /services/qguard/ here, and user
        # servers on this host reach it directly (QGUARD_TEAM_BROKER_URL above).
        "url": "http://127.0.0.1:10101",
        "command": [
            "jupyter",
            "qguard",
            "broker",
            "--hub",
            "--config=/etc/qguard/broker_config.py",
        ],
        # Run as the system account `qguard`, which owns /srv/qguard*, and whose keyring holds
        # the team's provider credentials. Without "user", the service runs as the hub's account.
        "user": "qguard",
        "cwd": "/srv/qguard",
        # The hub passes a service only PATH, LANG and the like from its own environment, plus
        # what is listed here:
        # - the hub's QGUARD_* variables (QGUARD_KEYRING_PASSWORD, and QGUARD_DB_PASSWORD unless
        #   the `qguard` account has a ~/.pgpass), e.g. from the hub's systemd unit
        #   (EnvironmentFile=/etc/qguard/secrets.env, mode 0600); broker_config.py reads them;
        # - TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR: an error in broker_config.py stops the
        #   broker (the hub restarts it, the log says why) instead of being logged and skipped,
        #   which would leave the broker on its defaults.
        "environment": {
            **{name: value for name, value in os.environ.items() if name.startswith("QGUARD_")},
            "TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR": "1",
        },
        # OAuth tokens issued to the service's pages carry at most these scopes, each only when
        # the person holds it: so an approver's token carries custom:qguard:approve.
        "oauth_client_allowed_scopes": [
            "custom:qguard:request",
            "custom:qguard:approve",
            "custom:qguard:admin",
            "access:services!service=qguard",
        ],
        # Listed in the hub's Services menu: the approval pages.
        "display": True,
        # A service the admin set up: signing in to its pages asks no consent.
        "oauth_no_confirm": True,
    },
]
