"""The workspace as the agent kernel sees it (issue 18), from the escape suite's world (real
server, real kernels, as root and as an unprivileged user): the interpreter starts isolated
and enters the notebook's folder only once confined, imports beside the notebook still work,
bytecode never lands in the workspace, nothing the agent planted there runs at a start or a
restart, and the sandbox report names every `.git` it made read-only."""

from __future__ import annotations


def test_notebook_kernel_works_in_the_notebooks_folder(escape_results):
    mode, results = escape_results
    nb = results["__notebook__"]
    for when in ("first", "restarted"):
        facts = nb[when]
        assert facts["cwd"] == nb["folder"], (mode, when)
        assert facts["isolated"] == 1, (mode, when)
        # IPython leaves '' out under -I; the launcher puts it back, once confined
        assert facts["cwd_on_sys_path"] is True, (mode, when)
        assert facts["mymod"] == [42, nb["folder"] + "/mymod.py"], (mode, when)


def test_bytecode_goes_to_the_kernel_dir_not_the_workspace(escape_results):
    mode, results = escape_results
    nb = results["__notebook__"]
    for when in ("first", "restarted"):
        facts = nb[when]
        assert facts["pycache_prefix"] == nb["kernel_dir"] + "/pycache", (mode, when)
        assert facts["mymod_bytecode_under_prefix"] is True, (mode, when)
        assert facts["pycache_beside_notebook"] is False, (mode, when)
    # every kernel of the run imported from the workspace; none wrote bytecode there
    assert results["__workspace_pycache__"] == [], mode


def test_planted_modules_never_run_at_start_or_restart(escape_results):
    mode, results = escape_results
    nb = results["__notebook__"]
    for when in ("first", "restarted"):
        # '' comes after the standard library: a json.py beside the notebook shadows nothing
        assert nb[when]["json_from_stdlib"] is True, (mode, when)
        # nor does a sourceless pickle.pyc
        assert nb[when]["pickle_from_stdlib"] is True, (mode, when)
    # json.py, sitecustomize.py, usercustomize.py, site.py, runpy.py, pickle.pyc (and, for
    # the restart, stat.py, socket.py, zmq.py) lay in the folder the kernel started for
    assert results["__planted_ran__"] == [], mode


def test_the_report_names_the_workspace_mounts(escape_results):
    mode, results = escape_results
    [kernel, *_] = results["__sandbox__"]["kernels"]
    mounts = kernel["sandbox"]["applied"]["namespaces"]["mounts"]
    assert mounts["workspace"] == {
        "mount": "idmapped" if mode == "root" else "bind",
        "attributes": ["nosuid", "nodev"],
    }
    git = mounts["git"]
    assert git["read_only"] == {
        "count": 6,
        "paths": [
            ".git",
            "deep/a/b/repo/.git",
            "proj/.git",
            "proj/sub/.git",
            "sep/.git",
            "store",
        ],
    }
    # every folder from a repository up to the workspace root, shallow first
    assert git["fixed_folders"] == {
        "count": 7,
        "paths": ["deep", "proj", "sep", "deep/a", "proj/sub", "deep/a/b", "deep/a/b/repo"],
    }
    assert git["failed"] == [] and git["complete"] is True
    assert mounts["walk"]["complete"] is True
    # the other protected names keep their read-only binds
    assert ".jupyter" in mounts["read_only"]
    seccomp = kernel["sandbox"]["applied"]["seccomp"]
    assert {"symlink", "symlinkat"} <= set(seccomp["denied"])
    assert seccomp["setuid_setgid_modes"] == [
        "chmod",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "open",
        "openat",
        "creat",
        "mknod",
        "mknodat",
    ]
