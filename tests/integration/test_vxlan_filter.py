"""Cluster mode's VXLAN filter in our nftables table, proven by traffic: datagrams to the VXLAN
port of a "host" namespace from a peer of the cluster and from a stranger, before and after the
peers are set, and across a full rewrite of the table."""

import subprocess
import sys
import uuid

import pytest

from plugin.kernel.nft import NftFirewall


LISTENER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        data, peer = s.recvfrom(100)
    except socket.timeout:
        continue
    print(peer[0], data.decode(), flush=True)
"""


def ns(name, *argv, check=True):
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True, check=check)


@pytest.fixture
def world():
    tag = uuid.uuid4().hex[:5]
    names = {k: f"pbtv{tag}{k}" for k in ("h", "p", "s")}
    for n in names.values():
        subprocess.run(["ip", "netns", "add", n], check=True)
        ns(n, "ip", "link", "set", "lo", "up")
    for i, k in enumerate(("p", "s")):
        subprocess.run(["ip", "-n", names["h"], "link", "add", f"to{k}", "type", "veth", "peer", "name", "eth0",
                        "netns", names[k]], check=True)
        ns(names["h"], "ip", "addr", "add", f"10.206.240.{4 * i + 1}/30", "dev", f"to{k}")
        ns(names["h"], "ip", "link", "set", f"to{k}", "up")
        ns(names[k], "ip", "addr", "add", f"10.206.240.{4 * i + 2}/30", "dev", "eth0")
        ns(names[k], "ip", "link", "set", "eth0", "up")
    fw = NftFirewall("PBTV", netns=names["h"])
    yield names, fw
    fw.close()
    for n in names.values():
        subprocess.run(["ip", "netns", "del", n], check=False)


def received(names, tag: str) -> set[str]:
    """Who of peer (10.206.240.2) and stranger (10.206.240.6) gets a datagram through to port 4789."""
    listener = subprocess.Popen(["ip", "netns", "exec", names["h"], sys.executable, "-c", LISTENER, "4789", "3"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        for k, dst in (("p", "10.206.240.1"), ("s", "10.206.240.5")):
            ns(names[k], sys.executable, "-c", "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
               f"[s.sendto(b'{tag}', ('{dst}', 4789)) for _ in range(3)]")
        out = listener.communicate(timeout=10)[0]
    finally:
        listener.kill()
    return {line.split()[0] for line in out.splitlines() if line.endswith(tag)}


def test_vxlan_is_taken_only_from_the_cluster_peers(world):
    names, fw = world
    fw.sync([], [], [])
    assert received(names, "off") == {"10.206.240.2", "10.206.240.6"}      # no cluster network: no filter
    fw.set_vxlan_peers(4789, ["10.206.240.2"])
    assert received(names, "on") == {"10.206.240.2"}                       # the stranger's is dropped
    assert fw.drift([], [], []) == []
    fw.sync([], [], [])                                                    # a full rewrite keeps it
    assert received(names, "kept") == {"10.206.240.2"}
    ns(names["h"], "nft", "flush", "set", "inet", fw.table, "vxlan_peers4")  # changed behind our back
    assert any("vxlan_peers4" in p for p in fw.drift([], [], []))
    fw.set_vxlan_peers(0, [])
    assert received(names, "off again") == {"10.206.240.2", "10.206.240.6"}
    with pytest.raises(Exception, match="unsafe"):
        fw.set_vxlan_peers(4789, ["10.206.240.2; drop"])
