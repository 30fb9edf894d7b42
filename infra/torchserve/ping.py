"""Health check of a TorchServe with token authorization on: GET /ping with the inference key.

TorchServe 0.12 asks for the token on /ping too, so plain HTTP probes fail; Docker HEALTHCHECK, ECS and
Kubernetes exec probes run this instead (python infra/torchserve/ping.py [KEY_FILE] [URL]). Exit 0: healthy.
"""

import json
import sys
import urllib.request

key_file = sys.argv[1] if len(sys.argv) > 1 else "/home/model-server/keys/key_file.json"
url = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8080/ping"
try:
    with open(key_file) as fh:
        key = json.load(fh)["inference"]["key"]
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=4) as resp:
        healthy = json.load(resp).get("status") == "Healthy"
except (OSError, ValueError, KeyError) as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
sys.exit(0 if healthy else 1)
