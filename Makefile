# The README's commands. Everything runs from the project's own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PORT   ?= 8888
DEMO_DIR ?= demo-workspace

.PHONY: env demo test test-python lint bench clean mcp-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installs the package (server extension config + kernelspec land in the venv's prefix). The
# build hook runs npm in labextension/ (Node and npm needed) to build the JupyterLab extension.
env: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"

demo: env
	$(BIN)/python -m jupyter_qguard.demo --port $(PORT) --workspace $(DEMO_DIR)

define LINT
$(BIN)/ruff check jupyter_qguard tests bench examples
$(BIN)/ruff format --check jupyter_qguard tests bench examples
endef

lint: env
	$(LINT)

# As root (CI), the sandbox tests also run as the unprivileged user qgtest, created here. The
# real MCP clients the agent tests drive get a venv of their own (.venv-mcp, pinned in
# tests/mcp/requirements.txt), as a person installs them; made while the project's own is
# installed (two installs at once: a minute less).
test: $(BIN)/python
	$(MAKE) --no-print-directory -j2 env mcp-venv
	$(LINT)
	@if [ "$$(id -u)" = 0 ]; then bash tests/setup-unprivileged.sh; fi
	$(BIN)/python -m pytest -q -ra --durations=30 -n 2 --dist loadgroup

mcp-venv: $(BIN)/python
	$(BIN)/python tests/support/mcp_client.py

bench: env
	$(BIN)/python bench/run.py
	$(BIN)/python bench/table.py

clean:
	rm -rf $(VENV) .venv-mcp build dist *.egg-info jupyter_qguard/labextension \
	       labextension/node_modules labextension/lib labextension/tsconfig.tsbuildinfo
