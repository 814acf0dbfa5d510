"""What `pybridge hosts --apply` may write into /etc/hosts: addresses that parse and names of
the characters Docker allows; anything else (a newline would add a line of its own) is left out."""

import importlib.machinery
import importlib.util
import os

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "pybridge")


def cli():
    loader = importlib.machinery.SourceFileLoader("pybridge_cli", PATH)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("pybridge_cli", loader))
    loader.exec_module(module)
    return module


def test_only_parsed_addresses_and_plain_names_reach_the_hosts_file():
    entries = cli()._host_entries
    assert list(entries({"container": "web", "network_name": "app", "ipv4": "10.0.0.2/24", "ipv6": "fd00::2/64"})) \
        == [("10.0.0.2", "web.app"), ("fd00::2", "web.app")]
    for bad in ("web\n6.6.6.6 bank.example", "web app", "web#x", "", "-web"):
        assert list(entries({"container": bad, "network_name": "app", "ipv4": "10.0.0.2/24"})) == [], bad
    assert list(entries({"container": "web", "network_name": "app", "ipv4": "10.0.0.2\n", "ipv6": None})) == []
