"""Container health check: GET /health on the node's HTTP port with the token, exit 0 only on 200.

Used by the Dockerfile's HEALTHCHECK (the image has no curl). Reads ERCP_NODE_NODE_HTTP_PORT and
ERCP_NODE_NODE_HTTP_TOKEN_FILE like the node does."""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("ERCP_NODE_NODE_HTTP_PORT", "8080")
headers = {}
token_file = os.environ.get("ERCP_NODE_NODE_HTTP_TOKEN_FILE")
if token_file:
    with open(token_file) as fh:
        headers["Authorization"] = "Bearer " + fh.read().strip()
try:
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/health", headers=headers),
                                timeout=8) as r:
        sys.exit(0 if r.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
