"""pybridge: a Linux bridge network driver and IPAM driver for Docker (libnetwork remote plugin).

Importing this package has no side effects; processes start in ``plugin.__main__``.
"""

__version__ = "0.1.0"
