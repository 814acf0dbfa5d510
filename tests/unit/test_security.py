"""Security properties that can be read off the code."""

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
                assert call.args and not isinstance(call.args[0], (ast.Constant, ast.JoinedStr)), \
                    f"{path}:{call.lineno}: a command must be an argument list"


def test_sockets_are_owner_only():
    source = (PLUGIN / "server.py").read_text()
    assert "os.chmod(path, 0o600)" in source and '"umask": 0o077' in source
