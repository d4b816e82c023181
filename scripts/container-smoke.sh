#!/usr/bin/env bash
# Container smoke test of the server image (NOT part of pytest: building takes minutes).
#
# Builds server/Dockerfile, then checks: no torch in the image; it runs as a non-root user;
# the hub comes up and /healthz, /readyz answer; the image's HEALTHCHECK passes; an adapter
# published through the authenticated POST can be downloaded, with a signature that
# verifies under the key from /v1/signing-key; If-None-Match gives 304; the dashboard and
# /metrics are served; a write without the token is refused.
#
# Engine: podman (preferred) or docker; FEDLORA_CONTAINER_ENGINE overrides. On machines
# prepared by shared/tools/podman-setup.sh the script uses its prefix (vfs storage, runc)
# and host networking. Usage: bash scripts/container-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${FEDLORA_SMOKE_IMAGE:-fedlora-server:smoke}
NAME=fedlora-hub-smoke-$$
PORT=${FEDLORA_SMOKE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
TOKEN=smoke-token-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d)
say() { printf '\n== %s\n' "$*"; }

# ------------------------------------------------------------------ engine
BUILD_EXTRA=()
RUN_EXTRA=()
if [ -n "${FEDLORA_CONTAINER_ENGINE:-}" ]; then
  P=$FEDLORA_CONTAINER_ENGINE
elif [ -f ../shared/tools/podman-setup.sh ]; then
  eval "$(bash ../shared/tools/podman-setup.sh | grep -E '^(export CONTAINERS_CONF=|P=)')"
  export CONTAINERS_CONF
elif command -v podman >/dev/null; then
  P=podman
elif command -v docker >/dev/null; then
  P=docker
else
  echo "no container engine (podman or docker) found" >&2
  exit 2
fi
case "$P" in
  podman*)
    # docker format: OCI images cannot carry the HEALTHCHECK.
    BUILD_EXTRA=(--format docker --network host --ignorefile server/Dockerfile.dockerignore)
    # This machine's CA bundle, for pip inside the build (not over the image's own bundle:
    # the ca-certificates package must be free to write that one).
    [ -f /etc/ssl/certs/ca-certificates.crt ] && BUILD_EXTRA+=(
      -v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt:ro
      --build-arg BUILD_CA_CERT=/run/build-ca.crt)
    RUN_EXTRA=(--network host --ulimit host)
    ;;
  *)
    RUN_EXTRA=(--network host)
    ;;
esac
# A base image imported from a directory made by `mktemp -d` has a 0700 root directory, and
# no unprivileged process can run in it (layers cannot change "/"). If that is what this
# machine has, re-import it through export (which carries no "/" entry) under a local name.
FIXED_BASE=localhost/fedlora-smoke-base:bookworm-slim
if [[ "$P" == podman* ]] && ! $P run --rm "${RUN_EXTRA[@]}" --user 65534 --entrypoint /bin/true \
    debian:bookworm-slim >/dev/null 2>&1; then
  if ! $P image exists "$FIXED_BASE"; then  # re-importing each time would defeat the cache
    say "repairing this machine's debian:bookworm-slim (root directory not traversable)"
    base_cid=$($P create debian:bookworm-slim /bin/true)
    $P export "$base_cid" | $P import - "$FIXED_BASE" >/dev/null
    $P rm "$base_cid" >/dev/null
  fi
  BUILD_EXTRA+=(--build-arg BASE_IMAGE="$FIXED_BASE")
fi

cleanup() {
  $P rm -f "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# ------------------------------------------------------------------ build
say "build $IMAGE with: $P"
start=$(date +%s)
$P build "${BUILD_EXTRA[@]}" -f server/Dockerfile -t "$IMAGE" .
echo "built in $(( $(date +%s) - start )) s; size: $($P image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

say "image has no torch and runs as non-root"
$P run --rm --entrypoint python3 "$IMAGE" -c '
import importlib.util, os, sys
heavy = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m)]
print("uid", os.getuid(), "heavy", heavy)
sys.exit(1 if heavy or os.getuid() == 0 else 0)'

# ------------------------------------------------------------------ run the hub
say "run the hub on 127.0.0.1:$PORT"
$P run -d --name "$NAME" "${RUN_EXTRA[@]}" \
  -e FEDLORA_HUB_HOST=127.0.0.1 -e FEDLORA_HUB_PORT="$PORT" -e FEDLORA_HUB_TOKEN="$TOKEN" \
  "$IMAGE" >/dev/null
BASE=http://127.0.0.1:$PORT
for _ in $(seq 1 60); do
  curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$BASE/healthz"; echo
curl -fsS "$BASE/readyz"; echo
if [[ "$P" == podman* ]]; then
  $P healthcheck run "$NAME" && echo "HEALTHCHECK: healthy"
fi

say "publish an adapter through the authenticated API"
$P exec "$NAME" python3 -c '
import sys
from fedlora.adapter_io import to_safetensors_bytes
from fedlora.server.demo import make_demo_adapter
sys.stdout.buffer.write(to_safetensors_bytes(make_demo_adapter(8, hidden=128, layers=4, seed=7)))
' > "$WORK/adapter.safetensors"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/v1/runs" \
  -H 'Content-Type: application/json' -d '{"name":"smoke"}')
[ "$code" = 401 ] || { echo "unauthenticated write was answered $code, not 401" >&2; exit 1; }
run_id=$(curl -fsS -X POST "$BASE/v1/runs" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d '{"name":"smoke"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -fsS -X POST "$BASE/v1/runs/$run_id/adapters?views=2&views=4" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/octet-stream' \
  --data-binary @"$WORK/adapter.safetensors" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print("published round", d["round"]["number"], "versions", [d["community"]["version"]] + [v["version"] for v in d["views"]])'

say "download it and verify the signature with the pinned key"
curl -fsS -D "$WORK/headers" -o "$WORK/latest-r4.safetensors" "$BASE/v1/adapters/latest?rank=4"
curl -fsS "$BASE/v1/signing-key" -o "$WORK/key.json"
etag=$(grep -i '^etag:' "$WORK/headers" | cut -d' ' -f2 | tr -d '\r')
sig=$(grep -i '^x-fedlora-signature:' "$WORK/headers" | cut -d' ' -f2 | tr -d '\r')
key_b64=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["public_key_raw_b64"])' "$WORK/key.json")
$P exec -i -e KEY_B64="$key_b64" -e SIG_B64="$sig" "$NAME" python3 -c '
import base64, os, sys
from fedlora.privacy.signing import AdapterSignature, key_id, load_verified, public_key_from_raw
pinned = public_key_from_raw(base64.b64decode(os.environ["KEY_B64"]))
signature = AdapterSignature.from_json(base64.b64decode(os.environ["SIG_B64"]))
adapter = load_verified(sys.stdin.buffer.read(), signature, pinned)
print("verified: rank", adapter.max_rank, "modules", len(adapter.modules), "key", key_id(pinned))
' < "$WORK/latest-r4.safetensors"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$BASE/v1/adapters/latest?rank=4")
[ "$code" = 304 ] || { echo "If-None-Match gave $code, not 304" >&2; exit 1; }
echo "If-None-Match $etag -> 304"
curl -fsS -o "$WORK/peft.zip" "$BASE/v1/adapters/$(grep -i '^x-fedlora-version:' "$WORK/headers" | cut -d' ' -f2 | tr -d '\r')/peft.zip"
python3 -c "import zipfile,sys; print('peft.zip:', sorted(zipfile.ZipFile(sys.argv[1]).namelist()))" "$WORK/peft.zip"

say "dashboard and metrics"
curl -fsS "$BASE/dashboard" | grep -q '/dashboard/dashboard.js' && echo "dashboard served"
curl -fsS "$BASE/metrics" | grep -E '^fedlora_(latest_round|registry_up)' || true

say "container smoke test passed"
