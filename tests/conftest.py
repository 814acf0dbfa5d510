"""Shared fixtures. Markers: unit tests need nothing; integration needs root; e2e needs root
and a real dockerd with the test plugin installed (scripts/test.sh sets that up)."""

import pytest

from plugin.config import load_settings
from plugin.store.db import Store
from plugin.wiring import build_services

from .fakes import FakeFirewall, FakeNetlink, FakeSysctl

KINDS = ("unit", "integration", "e2e", "multihost", "dockerpy")


def pytest_collection_modifyitems(items):
    """Each test is marked with its kind, the directory it is in (markers: pyproject.toml)."""
    for item in items:
        parts = item.path.parts
        kind = (
            next((k for k in KINDS if k in parts[parts.index("tests") + 1 :][:1]), None) if "tests" in parts else None
        )
        if kind:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture
def fake_services(tmp_path):
    settings = load_settings(
        {
            "PYBRIDGE_NAME": "pbtest",
            "PYBRIDGE_IFPREFIX": "pt",
            "PYBRIDGE_DEFAULT_POOLS": "10.207.0.0/16:24",
            "PYBRIDGE_DEFAULT_POOLS6": "fd70:6201:ff00::/40:64",
        },
        state_dir=str(tmp_path),
        dns=False,
    )
    store = Store(tmp_path / "state.db").open()
    services = build_services(
        settings,
        netlink=FakeNetlink(host_routes=["192.0.2.0/24"]),
        firewall=FakeFirewall(),
        sysctl=FakeSysctl(),
        store=store,
        synchronous_teardown=True,
    )
    yield services
    store.close()


@pytest.fixture
def client(fake_services):
    from plugin.app import create_app

    app = create_app(fake_services)
    return app.test_client()
