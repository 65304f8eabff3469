"""Entry point of an agent kernel process: `python -m jupyter_qguard.sandbox.launch -f CONN`.

Runs in the kernel process before ipykernel: checks that it was started by the qguard
provisioner (it holds its broker channel), then starts ipykernel with the qguard magics
loaded. The OS sandbox layers are applied here, before any agent code can run.
"""

from __future__ import annotations

import os
import stat
import sys

from .environment import CHANNEL_FD_VAR


def _check_channel() -> None:
    fd_text = os.environ.get(CHANNEL_FD_VAR, "")
    try:
        fd = int(fd_text)
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError("not a socket")
    except (ValueError, OSError) as exc:
        sys.stderr.write(
            f"qguard: this kernel has no broker channel ({CHANNEL_FD_VAR}={fd_text!r}: {exc}). "
            "A qguard agent kernel must be started by the qguard kernel provisioner, inside a "
            "Jupyter server with the jupyter_qguard extension.\n"
        )
        raise SystemExit(3) from None


def main(argv: list[str] | None = None) -> None:
    _check_channel()
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(list(sys.argv[1:] if argv is None else argv))
    # Loaded after config: nothing in a config file can leave the guard out.
    app.shell.extension_manager.load_extension("jupyter_qguard")
    app.start()


if __name__ == "__main__":
    main()
