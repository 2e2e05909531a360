# ercp-node container image: the node (C-STORE SCP, workers, exporter) with its status page, /health and /metrics.
#   docker build -t ercp-node .          (or: podman build / buildah bud)
#   docker compose -f deploy/compose.yaml up    (with Orthanc as the PACS, for a local trial)
# CPU build (tensorflow-cpu, the tested path). Research use, not for diagnosis.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# A dedicated unprivileged user; its home is the data directory.
RUN groupadd --system --gid 10001 ercp-node \
 && useradd --system --uid 10001 --gid ercp-node --home-dir /var/lib/ercp-node --shell /usr/sbin/nologin ercp-node \
 && install -d -m 0700 -o ercp-node -g ercp-node /var/lib/ercp-node \
 && install -d -m 0755 /etc/ercp-node

WORKDIR /opt/ercp-node
COPY pyproject.toml README.md ./
COPY ercp_node ./ercp_node
RUN pip install . && rm -rf /root/.cache
COPY deploy/healthcheck.py /opt/ercp-node/healthcheck.py
COPY docs ./docs

# Settings as ERCP_NODE_<SECTION>_<KEY> (docs/operations.md); a TOML file can be mounted at /etc/ercp-node.
# The HTTP port listens on all interfaces of the container, so a token file is required (a secret).
ENV ERCP_NODE_NODE_DATA_DIR=/var/lib/ercp-node \
    ERCP_NODE_NODE_PORT=11112 \
    ERCP_NODE_NODE_HTTP_PORT=8080 \
    ERCP_NODE_NODE_HTTP_BIND=0.0.0.0 \
    ERCP_NODE_NODE_HTTP_TOKEN_FILE=/run/secrets/ercp_node_http_token

VOLUME ["/var/lib/ercp-node"]
EXPOSE 11112 8080
USER ercp-node:ercp-node
# The model loads before the node serves (a minute on a small CPU): start-period covers it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
  CMD ["python", "/opt/ercp-node/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ercp-node"]
CMD ["serve"]
