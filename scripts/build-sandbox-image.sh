#!/bin/bash
# Build the default sandbox image for the docker driver, offline from Debian's mirror (no registry).
#
#   scripts/build-sandbox-image.sh [IMAGE]        IMAGE defaults to $SANDBOX_IMAGE or mcp-sessions-sandbox:bookworm
#   FORCE=1 scripts/build-sandbox-image.sh        rebuild even if the image exists
#
# The image holds Debian bookworm (minbase) with bash, coreutils, git, python3, procps and
# ca-certificates, a user `sandbox` (uid/gid 1000) and /workspace owned by it. `mmdebstrap` streams
# a tarball straight into `docker import`, so no scratch folder is needed. Idempotent: it does
# nothing if the image already exists. Needs root, `mmdebstrap`, a running Docker engine and a
# Debian mirror (MIRROR, default: the one apt uses).
set -euo pipefail

IMAGE=${1:-${SANDBOX_IMAGE:-mcp-sessions-sandbox:bookworm}}
SUITE=${SUITE:-bookworm}
DOCKER=${DOCKER:-docker}
# Prefer Debian's CLI: it always matches the engine installed by docker.io.
if [ "$DOCKER" = docker ] && [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "image $IMAGE already present"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
"$DOCKER" info >/dev/null 2>&1 || { echo "the Docker engine is not reachable: run scripts/start-docker.sh" >&2; exit 1; }

mirror_args=()
if [ -n "${MIRROR:-}" ]; then mirror_args=("$MIRROR"); fi

echo "building $IMAGE from Debian $SUITE (about a minute)..."
mmdebstrap --quiet --variant=minbase --include=bash,coreutils,git,python3,procps,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --aptopt='Acquire::Languages "none"' \
  --customize-hook='chroot "$1" groupadd -g 1000 sandbox' \
  --customize-hook='chroot "$1" useradd -m -u 1000 -g 1000 -s /bin/bash sandbox' \
  --customize-hook='mkdir -p "$1/workspace" && chown 1000:1000 "$1/workspace"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  "$SUITE" - "${mirror_args[@]}" \
| "$DOCKER" import \
    --change 'CMD ["/bin/bash"]' --change 'WORKDIR /workspace' --change 'USER 1000:1000' \
    --change 'ENV LANG=C.UTF-8' --change 'ENV HOME=/home/sandbox' \
    - "$IMAGE" >/dev/null

"$DOCKER" run --rm --network none --user 1000:1000 "$IMAGE" \
  bash -c 'id -u | grep -qx 1000 && git --version >/dev/null && python3 --version >/dev/null && ps --version >/dev/null && [ -w /workspace ]' \
  || { echo "the image $IMAGE was built but fails its smoke test" >&2; exit 1; }
echo "image $IMAGE ready"
