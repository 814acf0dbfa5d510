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
    module = cli()

    def entries(e, suffix="pybridge.internal"):
        return module._host_entries({"host_domain": "app.pybridge.internal", **e}, suffix)

    assert list(entries({"container": "web", "ipv4": "10.0.0.2/24", "ipv6": "fd00::2/64"})) == [
        ("10.0.0.2", "web.app.pybridge.internal"),
        ("fd00::2", "web.app.pybridge.internal"),
    ]
    for bad in ("web\n6.6.6.6 bank.example", "web app", "web#x", "", "-web"):
        assert list(entries({"container": bad, "ipv4": "10.0.0.2/24"})) == [], bad
    assert list(entries({"container": "web", "ipv4": "10.0.0.2\n", "ipv6": None})) == []


def test_no_name_outside_the_suffix_reaches_the_hosts_file():
    """Issue 20, item 1: a container metadata on a network google.internal was written as
    metadata.google.internal. Names are under the suffix now, and the command checks it: what
    the plugin answers is not trusted."""
    entries = cli()._host_entries
    for domain in (
        "google.internal",
        "com",
        "internal",
        "pybridge.internal",
        "x.pybridge.internal.evil.com",
        "a..pybridge.internal",
        "",
    ):
        assert (
            list(entries({"container": "metadata", "host_domain": domain, "ipv4": "10.0.0.2/24"}, "pybridge.internal"))
            == []
        ), domain
    assert list(
        entries(
            {"container": "metadata", "host_domain": "google.internal.pybridge.internal", "ipv4": "10.0.0.2/24"},
            "pybridge.internal",
        )
    ) == [("10.0.0.2", "metadata.google.internal.pybridge.internal")]
