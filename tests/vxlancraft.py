"""VXLAN made by hand, as an attacker on a cluster host (or on the underlay) would: a Python
script run in a network namespace, sent from a raw socket with an outer source address of its
choosing, or from a plain UDP socket. The inner frame is an IPv4 datagram to the victim: UDP to a
port (`udp:PORT:TAG`) or an ICMP echo request (`icmp`).

    python3 -c SCRIPT MODE OUTER_SRC OUTER_DST VNI INNER_DST_MAC INNER_SRC_MAC INNER_DST INNER

prints "sent" once its three copies are out, or "refused ..." when sending is not permitted.
"""

SCRIPT = r"""
import socket, struct, sys
mode, osrc, odst, vni, dmac, smac, idst, what = sys.argv[1:]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b + b"\0" * (len(b) % 2)))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def ipv4(src, dst, proto, body):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + body
def udp(sport, dport, body):
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
if what == "icmp":
    echo = struct.pack("!BBHHH", 8, 0, 0, 0x7062, 1) + b"pybridge"
    inner_ip = ipv4("10.250.7.9", idst, 1, echo[:2] + struct.pack("!H", csum(echo)) + echo[4:])
else:
    _, port, tag = what.split(":", 2)
    inner_ip = ipv4("10.250.7.9", idst, 17, udp(5555, int(port), tag.encode()))
mac = lambda m: bytes.fromhex(m.replace(":", ""))
inner = mac(dmac) + mac(smac) + b"\x08\x00" + inner_ip
vxlan = b"\x08\x00\x00\x00" + struct.pack("!I", int(vni) << 8) + inner
try:
    if mode == "raw":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        for _ in range(3):
            s.sendto(ipv4(osrc, odst, 17, udp(40000, 4789, vxlan)), (odst, 0))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(3):
            s.sendto(vxlan, (odst, 4789))
    print("sent")
except PermissionError as e:
    print("refused", e)
"""
