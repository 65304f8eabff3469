#!/usr/bin/env bash
# Test setup (run as root by `make test`): an unprivileged account, `qgtest`, that can run this
# checkout's virtual environment, so the sandbox tests run once as root and once as a plain user.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup-unprivileged: not root, nothing to do"; exit 0; }
id qgtest >/dev/null 2>&1 || useradd --create-home --shell /bin/bash qgtest
py="$(readlink -f .venv/bin/python)"
# qgtest must reach the interpreter, the venv and this checkout: give traversal (o+x, not
# read) to the directories above them that lack it (pyenv under /root, a private clone dir).
for target in "$py" "$PWD/.venv/bin/python" "$PWD/jupyter_qguard"; do
  d="$(dirname "$target")"
  while [ "$d" != "/" ]; do
    [ -n "$(find "$d" -maxdepth 0 -perm -o+x)" ] || chmod o+x "$d"
    d="$(dirname "$d")"
  done
done
runuser -u qgtest -- .venv/bin/python -c "import jupyter_qguard, qiskit_aer" \
  || { echo "setup-unprivileged: qgtest cannot run the environment" >&2; exit 1; }
echo "setup-unprivileged: qgtest ready"
