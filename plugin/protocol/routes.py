"""Every plugin method: a function (services, body) -> response dict.

The tables at the end are what app.py registers; a method not in them gets 404.
"""

from __future__ import annotations

from . import fields as f

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"


def activate(s, body):
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


# NetworkDriver
def net_capabilities(s, body):
    return s.networks.capabilities()


def create_network(s, body):
    options = f.mapping(body, "Options")
    s.networks.create(
        f.ident(body, "NetworkID"),
        f.string_map(options, GENERIC),
        ipv6=f.flag(options, ENABLE_IPV6),
        internal=f.flag(options, INTERNAL),
        ipv4_data=f.ipam_data(body, "IPv4Data"),
        ipv6_data=f.ipam_data(body, "IPv6Data"),
    )
    return {}


def gateway_check(s, body):
    options = f.mapping(body, "Options")
    return s.networks.gateway_check(f.string_map(options, GENERIC), internal=f.flag(options, INTERNAL))


def delete_network(s, body):
    s.networks.delete(f.ident(body, "NetworkID"))
    return {}


def create_endpoint(s, body):
    iface = f.mapping(body, "Interface")
    f.mapping(body, "Options")
    return s.endpoints.create(
        f.ident(body, "NetworkID"),
        f.ident(body, "EndpointID"),
        address=f.text(iface, "Address"),
        address6=f.text(iface, "AddressIPv6"),
        mac=f.text(iface, "MacAddress"),
    )


def delete_endpoint(s, body):
    s.endpoints.delete(f.ident(body, "NetworkID"), f.ident(body, "EndpointID"))
    return {}


def endpoint_oper_info(s, body):
    return s.endpoints.oper_info(f.ident(body, "NetworkID"), f.ident(body, "EndpointID"))


def join(s, body):
    f.mapping(body, "Options")
    return s.endpoints.join(f.ident(body, "NetworkID"), f.ident(body, "EndpointID"), f.text(body, "SandboxKey"))


def leave(s, body):
    s.endpoints.leave(f.ident(body, "NetworkID"), f.ident(body, "EndpointID"))
    return {}


PORTMAP = "com.docker.network.portmap"
# Set by dockerd (28+) when another endpoint of the container is its IPv6 gateway: this one is
# then its gateway for IPv4 only, and publishes no IPv6 port.
NO_PROXY_6TO4 = "com.docker.network.driver.private.no_proxy_6to4"


def program_external_connectivity(s, body):
    options = f.mapping(body, "Options")
    s.endpoints.program(
        f.ident(body, "NetworkID"),
        f.ident(body, "EndpointID"),
        f.items(options, PORTMAP),
        ipv6=not f.flag(options, NO_PROXY_6TO4),
    )
    return {}


def revoke_external_connectivity(s, body):
    s.endpoints.revoke(f.ident(body, "NetworkID"), f.ident(body, "EndpointID"))
    return {}


def no_op(s, body):
    return {}


def allocate_network(s, body):
    return {"Options": {}}


# IpamDriver
def ipam_capabilities(s, body):
    return s.ipam.capabilities()


def default_address_spaces(s, body):
    return s.ipam.default_address_spaces()


def request_pool(s, body):
    f.string_map(body, "Options")
    return s.ipam.request_pool(
        f.text(body, "AddressSpace", max_len=256),
        f.text(body, "Pool", max_len=64),
        f.text(body, "SubPool", max_len=64),
        f.flag(body, "V6"),
    )


def release_pool(s, body):
    s.ipam.release_pool(f.pool_ident(body, "PoolID"))
    return {}


def request_address(s, body):
    address = s.ipam.request_address(
        f.pool_ident(body, "PoolID"), f.text(body, "Address", max_len=64), f.string_map(body, "Options")
    )
    return {"Address": address, "Data": {}}


def release_address(s, body):
    s.ipam.release_address(f.pool_ident(body, "PoolID"), f.text(body, "Address", max_len=64))
    return {}


ROUTES = {
    "Plugin.Activate": activate,
    "NetworkDriver.GetCapabilities": net_capabilities,
    "NetworkDriver.GwAllocCheck": gateway_check,
    "NetworkDriver.CreateNetwork": create_network,
    "NetworkDriver.DeleteNetwork": delete_network,
    "NetworkDriver.CreateEndpoint": create_endpoint,
    "NetworkDriver.DeleteEndpoint": delete_endpoint,
    "NetworkDriver.EndpointOperInfo": endpoint_oper_info,
    "NetworkDriver.Join": join,
    "NetworkDriver.Leave": leave,
    "NetworkDriver.ProgramExternalConnectivity": program_external_connectivity,
    "NetworkDriver.RevokeExternalConnectivity": revoke_external_connectivity,
    "NetworkDriver.DiscoverNew": no_op,
    "NetworkDriver.DiscoverDelete": no_op,
    "NetworkDriver.AllocateNetwork": allocate_network,
    "NetworkDriver.FreeNetwork": no_op,
    "IpamDriver.GetCapabilities": ipam_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": default_address_spaces,
    "IpamDriver.RequestPool": request_pool,
    "IpamDriver.ReleasePool": release_pool,
    "IpamDriver.RequestAddress": request_address,
    "IpamDriver.ReleaseAddress": release_address,
}
