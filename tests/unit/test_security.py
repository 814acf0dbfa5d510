"""Security properties that can be read off the code."""

import pytest
import ast
import pathlib

PLUGIN = pathlib.Path(__file__).resolve().parents[2] / "plugin"


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_shell_is_ever_invoked_and_commands_are_argument_lists():
    for path in PLUGIN.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for call in calls(tree):
            name = ast.unparse(call.func)
            assert name not in ("os.system", "os.popen", "os.execl", "os.spawnl"), f"{path}: {name}"
            for kw in call.keywords:
                assert not (kw.arg == "shell" and ast.unparse(kw.value) != "False"), f"{path}: shell=True"
            if name in ("subprocess.run", "subprocess.Popen", "subprocess.check_output"):
                assert call.args and not isinstance(call.args[0], (ast.Constant, ast.JoinedStr)), (
                    f"{path}:{call.lineno}: a command must be an argument list"
                )


def test_sockets_are_owner_only(tmp_path):
    """What the server does to its sockets, done to a real one (it used to grep the source);
    tests/e2e/test_privileges.py stats the running plugin's."""
    import os
    import socket
    import stat

    from plugin.config import load_settings
    from plugin.server import PluginServer, _secure_sockets

    path = str(tmp_path / "p.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    os.chmod(path, 0o777)

    class Listener:
        cfg_addr = path

    class Arbiter:
        LISTENERS = [Listener()]

    try:
        _secure_sockets(Arbiter())
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        s.close()
    server = PluginServer(load_settings({}, state_dir=str(tmp_path), socket=str(tmp_path / "x.sock")))
    assert server.cfg.umask == 0o077 and server.cfg.when_ready is _secure_sockets


def test_the_netlink_event_decoder_never_raises_on_any_bytes():
    from hypothesis import given, settings, strategies as st

    from plugin.kernel import rtevents, rtnl

    @settings(max_examples=2000, deadline=None)
    @given(st.binary(max_size=400))
    def check(data):
        list(rtevents.events(data))

    check()

    # a well-formed RTM_NEWLINK of a bridge, and one of a veth
    def link(kind: bytes, index: int) -> bytes:
        info = rtnl.RTATTR.pack(4 + len(kind) + 1, rtnl.IFLA_INFO_KIND) + kind + b"\0"
        info += b"\0" * ((4 - len(info) % 4) % 4)
        attr = rtnl.RTATTR.pack(4 + len(info), rtnl.IFLA_LINKINFO | 0x8000) + info
        body = rtnl.IFINFOMSG.pack(0, 1, index, 0, 0) + attr
        return rtnl.NLMSGHDR.pack(16 + len(body), rtevents.RTM_NEWLINK, 0, 0, 0) + body

    assert list(rtevents.events(link(b"bridge", 7) + link(b"veth", 8))) == [
        rtevents.LinkEvent(7, "bridge", False),
        rtevents.LinkEvent(8, "veth", False),
    ]


def test_the_link_decoder_reads_what_it_needs_and_never_raises_but_valueerror():
    """rtnl.py reads the kernel's answers about links (and splits datagrams): any bytes give
    links, skipped messages, or ValueError for a body too short, nothing else."""
    from hypothesis import given, settings, strategies as st

    from plugin.kernel import rtnl

    @settings(max_examples=2000, deadline=None)
    @given(st.binary(max_size=400))
    def check(data):
        for _, _, a, b in rtnl.replies(data):
            try:
                rtnl.decode_link(data, a, b)
            except ValueError:
                pass

    check()
    # the request the plugin sends for a veth, read back as the kernel would answer for its link
    request = rtnl.encode_veth(7, "pbh1", "pbc1", 3, 1450, "02:42:0a:00:00:09")
    [(mtype, seq, a, b)] = list(rtnl.replies(request))
    assert (mtype, seq) == (rtnl.RTM_NEWLINK, 7)
    link = rtnl.decode_link(request, a, b)
    assert (link.name, link.kind, link.mtu, link.master) == ("pbh1", "veth", 1450, 3)
    for bad in ("", "x" * 16, "a\0b", "a/b"):
        with pytest.raises(ValueError):
            rtnl.encode_get(1, bad)
