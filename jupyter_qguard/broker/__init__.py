"""The broker: job requests from agent kernels, approvals, execution. Runs in the Jupyter server."""
