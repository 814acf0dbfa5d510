"""The sysctl adapter over a fake /proc/sys tree."""

from plugin.kernel.sysctl import Sysctl


def make(tmp_path, values):
    for path, value in values.items():
        f = tmp_path.joinpath(*path.split("/"))
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(value + "\n")
    return Sysctl(str(tmp_path))


def read(tmp_path, path):
    return tmp_path.joinpath(*path.split("/")).read_text().strip()


def test_ipv6_forwarding_keeps_router_advertisements(tmp_path):
    s = make(
        tmp_path,
        {
            "net/ipv6/conf/all/forwarding": "0",
            "net/ipv6/conf/eth0/accept_ra": "1",
            "net/ipv6/conf/eth1/accept_ra": "0",
            "net/ipv6/conf/default/accept_ra": "1",
        },
    )
    s.enable_ipv6_forwarding()
    assert read(tmp_path, "net/ipv6/conf/all/forwarding") == "1"
    assert read(tmp_path, "net/ipv6/conf/eth0/accept_ra") == "2"
    assert read(tmp_path, "net/ipv6/conf/eth1/accept_ra") == "0"
    assert read(tmp_path, "net/ipv6/conf/default/accept_ra") == "1"


def test_ensure_writes_only_when_different(tmp_path, monkeypatch):
    """Every open of the adapter is seen (it used to compare mtimes, which a coarse clock
    leaves equal whether written or not)."""
    import builtins

    from plugin.kernel import sysctl as module

    opened = []

    def recording_open(path, mode="r", *args, **kwargs):
        opened.append((str(path), mode))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", recording_open, raising=False)
    s = make(tmp_path, {"net/ipv4/ip_forward": "1"})
    f = tmp_path / "net/ipv4/ip_forward"
    s.ensure("1", "net", "ipv4", "ip_forward")
    assert opened and not [m for _, m in opened if "w" in m or "a" in m], opened
    opened.clear()
    s.ensure("0", "net", "ipv4", "ip_forward")
    assert (str(f), "w") in opened
    assert read(tmp_path, "net/ipv4/ip_forward") == "0"
