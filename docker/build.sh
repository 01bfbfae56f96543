#!/usr/bin/env bash
# Build the keeper and anvil images, then run the keeper in dry-run against the anvil container.
#   docker/build.sh                 # podman if present, else docker
#   BASE=python:3.11-slim-bookworm docker/build.sh
# On a host without Docker Hub (see python-stack.md), make a base with debootstrap first:
#   debootstrap --variant=minbase bookworm rootfs http://deb.debian.org/debian
#   tar -C rootfs -c . | podman import - localhost/debian:bookworm-minbase
#   BASE=localhost/debian:bookworm-minbase docker/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-$(command -v podman || command -v docker)}
BASE=${BASE:-python:3.11-slim-bookworm}
PY=${PY:-.venv/bin/python}
make -s setup

echo "== wheelhouse (pip inside a build may not reach PyPI)"
mkdir -p docker/wheelhouse && find docker/wheelhouse -type f ! -name .gitkeep -delete
"$PY" -m pip download -q --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
  -d docker/wheelhouse -r requirements.lock "setuptools>=68" wheel

echo "== anvil binary and a devnet state for the anvil image"
rm -rf docker/context && mkdir -p docker/context/devnet
cp "$("$PY" -c 'from devnet import toolchain; print(toolchain.anvil_path())')" docker/context/anvil
.venv/bin/perp-keeper devnet up --once --out-dir docker/context/devnet --state-out docker/context/devnet/state.json >/dev/null

echo "== build with $ENGINE (BASE=$BASE)"
FORMAT=()
[[ "$ENGINE" == *podman ]] && FORMAT=(--format docker)  # keep HEALTHCHECK (OCI images drop it)
"$ENGINE" build -q "${FORMAT[@]}" --build-arg BASE="$BASE" --build-arg PIP_FIND_LINKS=/wheelhouse \
  -t perp-keeper:dev -f docker/Dockerfile .
"$ENGINE" build -q "${FORMAT[@]}" --build-arg BASE="$BASE" -t perp-keeper-anvil:dev -f docker/Dockerfile.anvil .

echo "== dry-run against an anvil container"
"$ENGINE" rm -f perp-keeper-anvil >/dev/null 2>&1 || true
"$ENGINE" run -d --name perp-keeper-anvil --network host perp-keeper-anvil:dev >/dev/null
trap '"$ENGINE" rm -f perp-keeper-anvil >/dev/null 2>&1 || true' EXIT
for _ in $(seq 50); do
  curl -sf -X POST -H 'Content-Type: application/json' --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' \
    http://127.0.0.1:8545 >/dev/null && break
  sleep 0.2
done
"$ENGINE" run --rm --network host --read-only --tmpfs /tmp \
  -v "$PWD/docker/context/devnet:/config:ro" -v perp-keeper-state:/var/lib/perp-keeper \
  -e KEEPER_RPC_URL=http://127.0.0.1:8545 -e KEEPER_METADATA=/config/metadata.json \
  -e KEEPER_STATE_DB=/tmp/keeper.sqlite -e KEEPER_AUDIT_LOG=/tmp/audit.jsonl \
  perp-keeper:dev run --once --dry-run --from 0x70997970C51812dc3A010C7d01b50e0d17dc79C8
