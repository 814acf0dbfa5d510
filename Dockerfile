# Root filesystem of the pybridge managed plugin.
# BASE defaults to the official slim Python image; scripts/build-plugin.sh passes a locally built
# Debian base on machines without Docker Hub. Wheels are built on the host (pip inside a build
# container may have no working TLS) and installed with --no-index.
ARG BASE=python:3.11-slim
FROM ${BASE}
# nftables (nft, for `nft monitor`) and python3-nftables (libnftables' JSON API, used by the
# firewall's helper process); iptables for the one static rule and the old chains' removal.
RUN if ! command -v iptables-restore >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1 || \
       ! python3 -c 'import nftables' >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends iptables nftables python3-nftables && \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY build/wheels /tmp/wheels
RUN python3 -m pip install --no-cache-dir --no-index --find-links /tmp/wheels --break-system-packages \
      flask gunicorn pyroute2 requests-unixsocket dnspython && rm -rf /tmp/wheels
COPY plugin /opt/pybridge/plugin
ENV PYTHONPATH=/opt/pybridge PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN mkdir -p /run/docker/plugins /var/lib/pybridge /host/run-docker-plugins /host/proc/sys/net /run/pybridge
ENTRYPOINT ["python3", "-m", "plugin", "serve"]
