"""pyroute2 without its package's __init__ (plugin/kernel/pyroute2_lean.py): the worker's adapters
load with a fraction of the library, and whatever asks the package itself for a name still gets
it. Each case runs in a fresh interpreter: the step changes sys.modules for the process."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import json, sys
{setup}
import plugin.kernel.netlink, plugin.kernel.vxlan, plugin.wiring
from plugin.kernel.pyroute2_lean import is_lean
n = sum(1 for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2."))
print(json.dumps({{"lean": is_lean(), "modules": n}}))
"""


def test_the_adapters_load_without_the_package_init_and_with_far_fewer_modules():
    full = run(PROBE.format(setup=""))
    lean = run(
        PROBE.format(setup="from plugin.kernel.pyroute2_lean import use_lean_package; assert use_lean_package()")
    )
    assert not full["lean"] and lean["lean"]
    assert lean["modules"] < full["modules"] * 0.8, (lean, full)


def test_asking_the_package_for_a_name_runs_its_init_in_place_and_finds_it():
    got = run("""
import json
from plugin.kernel.pyroute2_lean import use_lean_package, is_lean
use_lean_package()
from pyroute2.iproute.linux import IPRoute as direct
from pyroute2 import config                   # a submodule: no full load for that
still_lean = is_lean()
from pyroute2 import IPRoute, NetlinkError    # a name of the package's own: the full __init__
import pyroute2
print(json.dumps({"still_lean": still_lean, "lean_after": is_lean(), "same": IPRoute is direct,
                  "version": pyroute2.__version__, "config": config.__name__}))
""")
    assert got == {
        "still_lean": True,
        "lean_after": False,
        "same": True,
        "version": got["version"],
        "config": "pyroute2.config",
    }
    assert got["version"][0].isdigit()


def test_nothing_changes_when_pyroute2_was_imported_already():
    got = run("""
import json, pyroute2
from plugin.kernel.pyroute2_lean import use_lean_package, is_lean
print(json.dumps({"registered": use_lean_package(), "lean": is_lean()}))
""")
    assert got == {"registered": False, "lean": False}
