"""The agent kernel's sandbox: launched by the `qguard` kernel provisioner."""
