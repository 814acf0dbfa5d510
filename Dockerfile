# Root filesystem of the pybridge managed plugin.
# BASE defaults to the official slim Python image; scripts/build-plugin.sh passes a locally built
# Debian base on machines without Docker Hub. Wheels are fetched on the host (pip inside a build
# container may have no working TLS) and installed with --no-index, each checked against the
# sha256 that requirements.lock pins (scripts/lock.sh makes it).
ARG BASE=python:3.13-slim
FROM ${BASE}
# iptables for the one static rule and the old chains' removal; nftables (nft) for an operator
# inside the plugin only: the plugin itself speaks nf_tables netlink (plugin/kernel/nftwire.py).
# wg (wireguard-tools) configures cluster mode's WireGuard device; wireguard-go carries it where
# the kernel has no WireGuard (PYBRIDGE_CLUSTER_ENCRYPT=wireguard).
RUN if ! command -v iptables-restore >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1 \
       || ! command -v wg >/dev/null 2>&1 || ! command -v wireguard-go >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends iptables nftables wireguard-tools wireguard-go && \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY requirements.lock /tmp/requirements.lock
COPY build/wheels /tmp/wheels
# Then what the plugin never uses at run time goes: pip and setuptools (only the install above
# needed them), documentation, manual pages, translations, time zones, apt's caches and lists,
# glibc's iconv modules (nothing here calls iconv); then a check that what runs is still there.
# --no-deps: the lock holds every package (--require-hashes would refuse one it does not); without
# it pip asks for setuptools, which pbr (etcd3gw's) declares but never needs at run time, and
# which trixie's pip no longer brings.
RUN python3 -m pip install --no-cache-dir --no-index --no-deps --find-links /tmp/wheels --break-system-packages \
      --require-hashes -r /tmp/requirements.lock && rm -rf /tmp/wheels /tmp/requirements.lock && \
    if dpkg -s python3-pip >/dev/null 2>&1; then \
      apt-get purge -y -q --auto-remove $(for p in python3-pip python3-setuptools python3-wheel python3-pkg-resources; do \
        dpkg -s "$p" >/dev/null 2>&1 && echo "$p"; done) >/dev/null; \
    else \
      python3 -m pip uninstall -q -y pip setuptools wheel >/dev/null 2>&1 || true; \
    fi && \
    rm -rf /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale /usr/share/zoneinfo \
      /usr/share/lintian /var/cache/apt/* /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/* \
      /usr/lib/*-linux-gnu/gconv && \
    python3 -c 'import flask, gunicorn, pyroute2, dns, prometheus_client, requests_unixsocket, jeepney, etcd3gw, sqlite3, publicsuffixlist' && \
    setpriv --version >/dev/null && \
    nft --version >/dev/null && iptables --version >/dev/null && wg --version >/dev/null && \
    command -v wireguard-go >/dev/null
COPY plugin /opt/pybridge/plugin
ENV PYTHONPATH=/opt/pybridge PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# bytecode compiled once here: the plugin writes none at run time (the rootfs stays as built)
RUN python3 -m compileall -q /opt/pybridge/plugin && \
    mkdir -p /run/docker/plugins /var/lib/pybridge /host/run-docker-plugins /host/proc/sys/net /run/pybridge
# as config.json's entrypoint: the plugin keeps only the capabilities it uses (see README)
ENTRYPOINT ["setpriv", "--bounding-set=-all,+net_admin,+net_raw,+net_bind_service", "--inh-caps=-all", "--", \
            "python3", "-m", "plugin", "serve"]
