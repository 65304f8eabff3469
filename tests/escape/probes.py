"""The escape suite's probes: what a hostile agent tries from inside its kernel.

Each probe is an expression evaluated in a real agent kernel (helpers in kernel_prelude.py),
with the exact outcome expected when the server runs as root and as an unprivileged user.
Placeholders in braces are filled from the running test's context (paths, pids, ports).
"""

from __future__ import annotations


# Outcomes
def E(name: str) -> list:
    return ["errno", name]


def OK(value: object) -> list:
    return ["ok", value]


# name: (expression, expected when the server is root, expected when it is a plain user)
PROBES: dict[str, tuple[str, list, list]] = {
    # -- credentials in the environment -------------------------------------------------
    "env_secret_var": ("os.environ.get('QGUARD_ESCAPE_SECRET')", OK(None), OK(None)),
    "env_hub_token": ("os.environ.get('JUPYTERHUB_API_TOKEN')", OK(None), OK(None)),
    "env_aws_key": ("os.environ.get('AWS_SECRET_ACCESS_KEY')", OK(None), OK(None)),
    "env_qiskit_token": ("os.environ.get('QISKIT_IBM_TOKEN')", OK(None), OK(None)),
    "env_dbus_address": ("os.environ.get('DBUS_SESSION_BUS_ADDRESS')", OK(None), OK(None)),
    "env_ssh_agent": ("os.environ.get('SSH_AUTH_SOCK')", OK(None), OK(None)),
    "env_no_secret_value": (
        "any({secret!r} in v for v in os.environ.values())",
        OK(False),
        OK(False),
    ),
    "proc_self_environ": (
        "{secret!r}.encode() in open('/proc/self/environ','rb').read()",
        OK(False),
        OK(False),
    ),
    "child_env_secret": (
        "in_child(\"os.environ.get('JUPYTERHUB_API_TOKEN')\")",
        OK(None),
        OK(None),
    ),
    # -- credentials in files under the server's HOME, and the keyring --------------------
    "home_qiskit_json": ("read({home!r} + '/.qiskit/qiskit-ibm.json')", E("ENOENT"), E("EACCES")),
    "home_aws_credentials": ("read({home!r} + '/.aws/credentials')", E("ENOENT"), E("EACCES")),
    "home_listing": ("os.listdir({home!r})", E("ENOENT"), E("EACCES")),
    "keyring_file": ("read({keyring_file!r})", E("ENOENT"), E("EACCES")),
    "keyring_backend": (
        "type(__import__('keyring').get_keyring()).__module__",
        OK("keyring.backends.null"),
        OK("keyring.backends.null"),
    ),
    "keyring_get": (
        "__import__('keyring').get_password('jupyter-qguard', 'escape')",
        OK(None),
        OK(None),
    ),
    "child_read_aws": (
        "in_child(\"read({home!r} + '/.aws/credentials')\")",
        E("ENOENT"),
        E("EACCES"),
    ),
    "fork_read_qiskit": (
        "in_fork(\"read({home!r} + '/.qiskit/qiskit-ibm.json')\")",
        E("ENOENT"),
        E("EACCES"),
    ),
    "ctypes_open_secret": (
        "sys_call('openat', -100, ({home!r} + '/.aws/credentials').encode(), 0, 0)",
        E("ENOENT"),
        E("EACCES"),
    ),
    # -- other processes through /proc -----------------------------------------------------
    "proc_server_environ": ("read('/proc/{server_pid}/environ')", E("ENOENT"), E("ENOENT")),
    "proc_server_cmdline": ("read('/proc/{server_pid}/cmdline')", E("ENOENT"), E("ENOENT")),
    "proc_server_mem": ("read('/proc/{server_pid}/mem')", E("ENOENT"), E("ENOENT")),
    "proc_other_kernel_environ": (
        "read('/proc/{other_kernel_pid}/environ')",
        E("ENOENT"),
        E("ENOENT"),
    ),
    "proc_only_own_namespace": (
        "sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:2] == [1, 2]",
        OK(True),
        OK(True),
    ),
    "proc_init_environ_secret": (
        "{secret!r}.encode() in open('/proc/1/environ','rb').read()",
        E("EACCES"),
        E("EACCES"),
    ),
    # -- the Jupyter runtime dir, other kernels, the broker's state ------------------------
    "runtime_server_json": ("read({server_json!r})", E("ENOENT"), E("EACCES")),
    "runtime_listing": ("os.listdir({runtime!r})", E("ENOENT"), E("EACCES")),
    "other_kernel_connection_file": (
        "read({other_kernel_dir!r} + '/connection.json')",
        E("EACCES"),
        E("EACCES"),
    ),
    "other_kernel_dir_listing": ("os.listdir({other_kernel_dir!r})", E("EACCES"), E("EACCES")),
    "broker_db_read": ("read({state!r} + '/qguard.db')", E("ENOENT"), E("EACCES")),
    "broker_db_write": ("write({state!r} + '/qguard.db')", E("ENOENT"), E("EACCES")),
    "broker_state_listing": ("os.listdir({state!r})", E("ENOENT"), E("EACCES")),
    # -- the network ---------------------------------------------------------------------------
    "tcp_socket": ("sock(socket.AF_INET, socket.SOCK_STREAM)", E("EPERM"), E("EPERM")),
    "tcp6_socket": ("sock(socket.AF_INET6, socket.SOCK_STREAM)", E("EPERM"), E("EPERM")),
    "udp_socket": ("sock(socket.AF_INET, socket.SOCK_DGRAM)", E("EPERM"), E("EPERM")),
    "udp6_socket": ("sock(socket.AF_INET6, socket.SOCK_DGRAM)", E("EPERM"), E("EPERM")),
    "raw_icmp_socket": (
        "sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
        E("EPERM"),
        E("EPERM"),
    ),
    "packet_socket": ("sock(socket.AF_PACKET, socket.SOCK_RAW)", E("EPERM"), E("EPERM")),
    "netlink_socket": ("sock(socket.AF_NETLINK, socket.SOCK_RAW, 0)", E("ENOTSUP"), E("ENOTSUP")),
    "dns_lookup": ("socket.getaddrinfo('pypi.org', 443)", ["gaierror", -3], ["gaierror", -3]),
    "http_to_server": (
        "__import__('urllib.request').request.urlopen('http://127.0.0.1:{port}/api', timeout=3)",
        E("EPERM"),
        E("EPERM"),
    ),
    "ctypes_raw_socket": ("sys_call('socket', 2, 1, 0)", E("EPERM"), E("EPERM")),
    "child_tcp_socket": (
        "in_child('sock(socket.AF_INET, socket.SOCK_STREAM)')",
        E("EPERM"),
        E("EPERM"),
    ),
    "fork_udp_socket": (
        "in_fork('sock(socket.AF_INET, socket.SOCK_DGRAM)')",
        E("EPERM"),
        E("EPERM"),
    ),
    # -- unix sockets: D-Bus, other kernels, abstract names ---------------------------------
    "unix_connect_session_bus": ("connect_unix({bus!r})", E("EPERM"), E("EPERM")),
    "unix_connect_abstract": ("connect_unix({abstract!r})", E("EPERM"), E("EPERM")),
    "unix_connect_other_kernel": ("connect_unix({other_kernel_socket!r})", E("EPERM"), E("EPERM")),
    "ctypes_raw_connect": ("sys_call('connect', 3, 0, 0)", E("EPERM"), E("EPERM")),
    "unix_dgram_sendto": (
        "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'x', {bus!r})",
        E("EPERM"),
        E("EPERM"),
    ),
    "unix_bind_outside": (
        "socket.socket(socket.AF_UNIX).bind('/tmp/qguard-escape.sock')",
        E("EACCES"),
        E("EACCES"),
    ),
    "child_connect_bus": ('in_child("connect_unix({bus!r})")', E("EPERM"), E("EPERM")),
    # sendmsg names its destination in memory seccomp cannot read: no datagram socket at all,
    # and the connection-oriented ones never send to a msg_name
    "unix_dgram_socket": ("sock(socket.AF_UNIX, socket.SOCK_DGRAM)", E("EPERM"), E("EPERM")),
    "unix_dgram_pair_sendmsg_bus": (
        "socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendmsg([b'x'], [], 0, {bus!r})",
        E("EPERM"),
        E("EPERM"),
    ),
    "unix_stream_sendmsg_bus": (
        "socket.socket(socket.AF_UNIX).sendmsg([b'x'], [], 0, {bus!r})",
        E("ENOTSUP"),
        E("ENOTSUP"),
    ),
    "socketpair_sendmsg_bus": (
        "(lambda p: p[0].sendmsg([b'x'], [], 0, {bus!r}))(socket.socketpair())",
        E("EISCONN"),
        E("EISCONN"),
    ),
    # TCP Fast Open connects from a send: the flag is refused whatever the socket
    "send_fastopen": (
        "(lambda p: p[0].send(b'x', socket.MSG_FASTOPEN))(socket.socketpair())",
        E("EPERM"),
        E("EPERM"),
    ),
    "socketpair_still_works": ("len(socket.socketpair())", OK(2), OK(2)),
    # -- other processes and the kernel's attack surface -----------------------------------
    "ptrace_attach_init": ("sys_call('ptrace', 16, 1, 0, 0)", E("EPERM"), E("EPERM")),
    "ptrace_traceme": ("sys_call('ptrace', 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    "process_vm_readv": ("sys_call('process_vm_readv', 1, 0, 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    "pidfd_getfd": ("sys_call('pidfd_getfd', 0, 0, 0)", E("EPERM"), E("EPERM")),
    "io_uring_setup": ("sys_call('io_uring_setup', 8, 0)", E("EPERM"), E("EPERM")),
    "bpf": ("sys_call('bpf', 0, 0, 0)", E("EPERM"), E("EPERM")),
    "keyctl": ("sys_call('keyctl', 0, 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    "add_key": ("sys_call('add_key', b'user', b'x', b'y', 1, -2)", E("EPERM"), E("EPERM")),
    "mount_tmpfs": ("sys_call('mount', b'none', b'/tmp', b'tmpfs', 0, 0)", E("EPERM"), E("EPERM")),
    "umount_proc": ("sys_call('umount2', b'/proc', 2)", E("EPERM"), E("EPERM")),
    "unshare_user": ("sys_call('unshare', 0x10000000)", E("EPERM"), E("EPERM")),
    "unshare_net": ("sys_call('unshare', 0x40000000)", E("EPERM"), E("EPERM")),
    "setns": ("sys_call('setns', 0, 0)", E("EPERM"), E("EPERM")),
    "clone_newuser": ("sys_call('clone', 0x10000000 | 17, 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    "clone3": ("sys_call('clone3', 0, 0)", E("ENOSYS"), E("ENOSYS")),
    # newer than the installed libseccomp (2.5.4 names nothing past 456): ruled by number
    "statmount_by_number": ("sys_call(457, 0, 0, 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    "listmount_by_number": ("sys_call(458, 0, 0, 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    "open_tree_attr_by_number": ("sys_call(467, -1, 0, 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    "quotactl_fd_by_number": ("sys_call(443, -1, 0, 0, 0, 0, 0)", E("EPERM"), E("EPERM")),
    # implemented by the kernel (EINVAL unfiltered) but not known as ordinary
    "lsm_set_self_attr_unknown": ("sys_call(460, 0, 0, 0, 0, 0, 0)", E("ENOSYS"), E("ENOSYS")),
    "mseal_ordinary": ("sys_call(462, 0, 0, 0, 0, 0, 0)", OK(0), OK(0)),
    "tiocsti": (
        "sys_call('ioctl', 0, 0x5412, ctypes.byref(ctypes.c_char(b'x')))",
        E("EPERM"),
        E("EPERM"),
    ),
    "perf_event_open": ("sys_call('perf_event_open', 0, 0, -1, -1, 0)", E("EPERM"), E("EPERM")),
    "init_module": ("sys_call('init_module', 0, 0, b'')", E("EPERM"), E("EPERM")),
    "seccomp_new_listener": ("sys_call('seccomp', 1, 8, 0)", E("EPERM"), E("EPERM")),
    "userfaultfd": ("sys_call('userfaultfd', 0)", E("EPERM"), E("EPERM")),
    "open_by_handle_at": ("sys_call('open_by_handle_at', 0, 0, 0)", E("EPERM"), E("EPERM")),
    "chroot": ("sys_call('chroot', b'/tmp')", E("EPERM"), E("EPERM")),
    "kill_init": ("os.kill(1, 0)", E("EPERM"), E("EPERM")),
    # as a plain user, uid 0 is not even mapped in the kernel's user namespace
    "setuid_root": ("os.setuid(0)", E("EPERM"), E("EINVAL")),
    "fork_ptrace": ("in_fork(\"sys_call('ptrace', 16, 1, 0, 0)\")", E("EPERM"), E("EPERM")),
    "child_unshare": ("in_child(\"sys_call('unshare', 0x10000000)\")", E("EPERM"), E("EPERM")),
    # an x32 syscall (getpid | __X32_SYSCALL_BIT): a foreign ABI, so the process is killed (SIGSYS)
    "foreign_arch_x32": (
        "in_child('libc.syscall(ctypes.c_long(0x40000000 | 39))')",
        ["exit", -31],
        ["exit", -31],
    ),
    # -- files outside the workspace, and paths that run code on the next start ------------
    "write_tmp": ("write('/tmp/qguard-escape')", E("EACCES"), E("EACCES")),
    "write_etc": ("write('/etc/qguard-escape')", E("EACCES"), E("EACCES")),
    "write_kernelspec": (
        "write({prefix!r} + '/share/jupyter/kernels/qguard-agent/kernel.json')",
        E("EACCES"),
        E("EACCES"),
    ),
    "write_site_pth": ("write({site!r} + '/qguard-escape.pth')", E("EACCES"), E("EACCES")),
    "write_user_jupyter": (
        "write({home!r} + '/.jupyter/jupyter_server_config.py')",
        E("ENOENT"),
        E("EACCES"),
    ),
    "write_ipython_startup": (
        "write({home!r} + '/.ipython/profile_default/startup/00.py')",
        E("ENOENT"),
        E("EACCES"),
    ),
    "write_bashrc": ("write({home!r} + '/.bashrc')", E("ENOENT"), E("EACCES")),
    "write_git_hook_in_workspace": ("write('.git/hooks/pre-commit')", E("EROFS"), E("EROFS")),
    "write_git_config_in_workspace": ("write('.git/config')", E("EROFS"), E("EROFS")),
    "write_jupyter_dir_in_workspace": (
        "write('.jupyter/jupyter_server_config.py')",
        E("EROFS"),
        E("EROFS"),
    ),
    # the workspace is a mount of its own for the kernel: a link from outside crosses mounts
    "hardlink_in_from_outside": (
        "os.link('/etc/hostname', 'hostname-link')",
        E("EXDEV"),
        E("EXDEV"),
    ),
    "child_write_tmp": (
        "in_child(\"write('/tmp/qguard-escape-child')\")",
        E("EACCES"),
        E("EACCES"),
    ),
    "ctypes_write_etc": (
        "sys_call('openat', -100, b'/etc/qguard-escape', 0o101, 0o644)",
        E("EACCES"),
        E("EACCES"),
    ),
    # -- symlinks: trusted readers outside would follow them, so the agent makes none ---------
    "symlink_out_then_write": (
        "(os.symlink('/etc/hosts', 'hosts-link'), write('hosts-link'))",
        E("EPERM"),
        E("EPERM"),
    ),
    "symlink_to_credentials": (
        "os.symlink({home!r} + '/.qiskit/qiskit-ibm.json', 'link.json')",
        E("EPERM"),
        E("EPERM"),
    ),
    "symlink_inside_workspace": (
        "os.symlink('escape-ok.txt', 'inside-link')",
        E("EPERM"),
        E("EPERM"),
    ),
    "symlinkat_ctypes": (
        "sys_call('symlinkat', b'/etc/passwd', -100, b'ctypes-link')",
        E("EPERM"),
        E("EPERM"),
    ),
    "symlink_ctypes": (
        "sys_call('symlink', b'/etc/passwd', b'ctypes-link2')",
        E("EPERM"),
        E("EPERM"),
    ),
    "child_symlink": (
        "in_child(\"os.symlink('/etc/hosts', 'child-link')\")",
        E("EPERM"),
        E("EPERM"),
    ),
    "hardlink_inside_still_works": (
        "(write('hl-src'), os.link('hl-src', 'hl-dst'), os.stat('hl-dst').st_nlink)[2]",
        OK(2),
        OK(2),
    ),
    # -- setuid / setgid: no such bit is set, and the workspace mount ignores them -------------
    "chmod_setuid": ("(write('mode-u'), os.chmod('mode-u', 0o4755))", E("EPERM"), E("EPERM")),
    "chmod_setgid": ("(write('mode-g'), os.chmod('mode-g', 0o2755))", E("EPERM"), E("EPERM")),
    "chmod_setgid_dir": ("(os.mkdir('dir-g'), os.chmod('dir-g', 0o2775))", E("EPERM"), E("EPERM")),
    "fchmod_setuid": (
        "(write('mode-f'), os.fchmod(os.open('mode-f', os.O_RDONLY), 0o4755))",
        E("EPERM"),
        E("EPERM"),
    ),
    "fchmodat_setuid_ctypes": (
        "(write('mode-a'), sys_call('fchmodat', -100, b'mode-a', 0o4755))",
        E("EPERM"),
        E("EPERM"),
    ),
    "fchmodat2_setuid_ctypes": (
        "(write('mode-c'), sys_call('fchmodat2', -100, b'mode-c', 0o4755, 0))",
        E("EPERM"),
        E("EPERM"),
    ),
    "child_chmod_setuid": (
        "in_child(\"(write('mode-k'), os.chmod('mode-k', 0o4755))\")",
        E("EPERM"),
        E("EPERM"),
    ),
    "open_create_setuid": (
        "os.open('suid-new', os.O_CREAT | os.O_WRONLY, 0o4755)",
        E("EPERM"),
        E("EPERM"),
    ),
    "open_create_setgid": (
        "os.open('sgid-new', os.O_CREAT | os.O_WRONLY, 0o2755)",
        E("EPERM"),
        E("EPERM"),
    ),
    "openat_create_setuid_ctypes": (
        "sys_call('openat', -100, b'suid-at', 0o101, 0o4755)",
        E("EPERM"),
        E("EPERM"),
    ),
    "creat_setuid_ctypes": ("sys_call('creat', b'suid-creat', 0o4755)", E("EPERM"), E("EPERM")),
    "mknod_setuid": ("os.mknod('suid-node', 0o100000 | 0o4755)", E("EPERM"), E("EPERM")),
    # its mode would be out of seccomp's sight: libc and runtimes fall back to openat
    "openat2_falls_back": (
        "sys_call('openat2', -100, b'escape-ok.txt', 0, 0)",
        E("ENOSYS"),
        E("ENOSYS"),
    ),
    "chmod_plain_still_works": (
        "(write('mode-p'), os.chmod('mode-p', 0o750), oct(os.stat('mode-p').st_mode & 0o7777))[2]",
        OK("0o750"),
        OK("0o750"),
    ),
    "workspace_mount_nosuid_nodev": (
        "all(o in mount_options({workspace!r}) for o in ('nosuid', 'nodev', 'rw'))",
        OK(True),
        OK(True),
    ),
    # -- .git at any depth: read-only, and fixed in place --------------------------------------
    "git_nested_mount_read_only": (
        "'ro' in mount_options({workspace!r} + '/proj/.git')",
        OK(True),
        OK(True),
    ),
    "git_commondir_create": (
        "write('proj/.git/commondir', b'../../evil')",
        E("EROFS"),
        E("EROFS"),
    ),
    "git_top_commondir_create": ("write('.git/commondir', b'../evil')", E("EROFS"), E("EROFS")),
    "git_info_create": ("write('proj/.git/info/x')", E("EROFS"), E("EROFS")),
    "git_info_exclude_write": ("write('proj/.git/info/exclude')", E("EROFS"), E("EROFS")),
    "git_nested_config_write": ("write('proj/.git/config')", E("EROFS"), E("EROFS")),
    "git_nested_hook_create": ("write('proj/.git/hooks/post-checkout')", E("EROFS"), E("EROFS")),
    "git_modules_config_write": ("write('proj/.git/modules/sub/config')", E("EROFS"), E("EROFS")),
    "git_submodule_gitdir_file_write": (
        "write('proj/sub/.git', b'gitdir: /tmp/evil')",
        E("EROFS"),
        E("EROFS"),
    ),
    "git_submodule_gitdir_file_unlink": ("os.unlink('proj/sub/.git')", E("EBUSY"), E("EBUSY")),
    "git_deep_config_write": ("write('deep/a/b/repo/.git/config')", E("EROFS"), E("EROFS")),
    "git_separate_gitdir_config_write": ("write('store/config')", E("EROFS"), E("EROFS")),
    "git_separate_gitdir_rename": ("os.rename('store', 'store-away')", E("EBUSY"), E("EBUSY")),
    "git_rename_top": ("os.rename('.git', 'git-away')", E("EBUSY"), E("EBUSY")),
    "git_rename_nested": ("os.rename('proj/.git', 'proj/git-away')", E("EBUSY"), E("EBUSY")),
    "git_rmdir_nested": ("os.rmdir('proj/.git')", E("EBUSY"), E("EBUSY")),
    "git_replace_by_rename_over": (
        "(os.mkdir('proj/fake-git'), os.rename('proj/fake-git', 'proj/.git'))",
        E("EBUSY"),
        E("EBUSY"),
    ),
    "git_rename_repo_folder": ("os.rename('proj', 'proj-away')", E("EBUSY"), E("EBUSY")),
    "git_rename_submodule_folder": (
        "os.rename('proj/sub', 'proj/sub-away')",
        E("EBUSY"),
        E("EBUSY"),
    ),
    "git_rename_deep_ancestor": ("os.rename('deep/a', 'deep/a-away')", E("EBUSY"), E("EBUSY")),
    "git_rename_deep_repo_folder": (
        "os.rename('deep/a/b/repo', 'deep/a/b/repo-away')",
        E("EBUSY"),
        E("EBUSY"),
    ),
    "git_child_write_commondir": (
        "in_child(\"write('proj/.git/commondir')\")",
        E("EROFS"),
        E("EROFS"),
    ),
    # a writable second name for a file of .git: across mounts, so no
    "git_hardlink_config_out": (
        "os.link('proj/.git/config', 'config-alias')",
        E("EXDEV"),
        E("EXDEV"),
    ),
    "git_work_tree_still_writable": ("write('proj/work.txt', b'ok')", OK("written"), OK("written")),
    # the price of fixing a repository's folder in place: moves across it are between mounts
    "rename_into_repo_folder": (
        "(write('move-me'), os.rename('move-me', 'proj/move-me'))",
        E("EXDEV"),
        E("EXDEV"),
    ),
    # -- the interpreter: isolated, bytecode outside the workspace ----------------------------
    "interpreter_isolated": ("sys.flags.isolated", OK(1), OK(1)),
    "cwd_on_sys_path": ("'' in sys.path", OK(True), OK(True)),
    "pycache_prefix_in_kernel_dir": (
        "sys.pycache_prefix == {kernel_dir!r} + '/pycache'",
        OK(True),
        OK(True),
    ),
    # child interpreters write no bytecode at all (and read the installed trees' caches)
    "children_write_no_bytecode": (
        "(os.environ.get('PYTHONDONTWRITEBYTECODE'), os.environ.get('PYTHONPYCACHEPREFIX'))",
        OK("('1', None)"),
        OK("('1', None)"),
    ),
    "child_import_from_workspace_leaves_no_pycache": (
        "in_child(\"(write('qg_child_mod.py', b'V = 3'), __import__('qg_child_mod').V, "
        "sys.dont_write_bytecode, os.path.isdir('__pycache__'))\")",
        OK("('written', 3, True, False)"),
        OK("('written', 3, True, False)"),
    ),
    "import_from_workspace_leaves_no_pycache": (
        "repr(import_from_workspace('qg_probe_mod'))",
        OK("[7, False, True]"),
        OK("[7, False, True]"),
    ),
    "stdlib_bytecode_stays_in_place": (
        "__import__('importlib.util').util.cache_from_source(os.__file__).startswith("
        "os.path.dirname(os.__file__) + '/__pycache__/')",
        OK(True),
        OK(True),
    ),
    # -- what must keep working ----------------------------------------------------------------
    "write_workspace": ("write('escape-ok.txt', b'fine')", OK("written"), OK("written")),
    "write_kernel_home": ("write(os.path.expanduser('~/note.txt'))", OK("written"), OK("written")),
    "not_root": ("os.getuid() != 0 and os.geteuid() != 0", OK(True), OK(True)),
    "no_capabilities": (
        "[l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]",
        OK("0000000000000000"),
        OK("0000000000000000"),
    ),
    "no_new_privs": (
        "[l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0]",
        OK("1"),
        OK("1"),
    ),
}
