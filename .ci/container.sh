#!/usr/bin/env bash
# The CPU image, built from Dockerfile and served as Docker serves it, on a machine with no Docker engine and
# no registry to pull from (the steps follow ../shared/FACTS.md, "Containers here"):
#   1. a local Python 3.11 base: Debian bookworm by debootstrap, imported with podman (kept between runs);
#   2. buildah builds Dockerfile on that base, with this machine's pip set-up mounted read-only;
#   3. .ci/container_check.py runs the image's rootfs in a PID namespace of its own (the entrypoint is PID 1,
#      uid 10001, /cache a volume), sends real requests, sends SIGTERM to PID 1 and checks the graceful exit;
#      then serves a hub model from a bind-mounted host cache as --user 1000:1000, offline.
# Needs root and the project's virtual environment active (the check's client). Prints sizes and times.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/clip-image-encoder:ci
BASE=localhost/py311-base
BUILDAH=(buildah --storage-driver vfs)
work=$(mktemp -d /var/tmp/clip-container.XXXXXX)
container=""
second=""

cleanup() {
    for name in $container $second; do
        "${BUILDAH[@]}" umount "$name" >/dev/null 2>&1 || true
        "${BUILDAH[@]}" rm "$name" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
}
trap cleanup EXIT

step() { echo "== container: $*"; }
started=$(date +%s)

step "tools (buildah, podman, debootstrap)"
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null || ! command -v podman >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap podman >/dev/null
fi

if ! podman --storage-driver vfs image exists "$BASE"; then
    step "local base $BASE (debootstrap bookworm)"
    base_started=$(date +%s)
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$work/rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    ln -s python3 "$work/rootfs/usr/bin/python"
    # An imported image has an empty PATH otherwise.
    tar -C "$work/rootfs" -c . | podman --storage-driver vfs import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
    rm -rf "$work/rootfs"
    echo "base built in $(( $(date +%s) - base_started )) s"
fi

step "build $IMAGE from Dockerfile"
# vfs keeps a full copy of the tree per layer (about 2 GB each here): working containers and untagged images
# left by earlier runs filled the disk once (a build failed committing a layer), so they go first.
"${BUILDAH[@]}" rm --all >/dev/null
"${BUILDAH[@]}" rmi --prune >/dev/null || true
df -h --output=avail /var/lib/containers | tail -n 1 | xargs echo "free for the build:"
mounts=()
for path in /etc/ssl/certs /etc/pip.conf /etc/xdg/pip /root/.config/pip /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -e "$path" ] && mounts+=(-v "$path:$path:ro")
done
build_started=$(date +%s)
# --format docker keeps HEALTHCHECK (the OCI format has none); the default extra index (the torch cpu wheels)
# cannot be reached here, so the machine's own indexes replace it.
"${BUILDAH[@]}" bud --isolation chroot --layers --format docker --quiet \
    --build-arg BASE="$BASE" \
    --build-arg PIP_EXTRA_INDEX_URL="$(pip config get global.extra-index-url 2>/dev/null || true)" \
    "${mounts[@]}" -t "$IMAGE" -f Dockerfile . >/dev/null
echo "image built in $(( $(date +%s) - build_started )) s"
"${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"

step "run and check"
# Two containers of the image: each `docker run` starts from the image's files, not from the last run's.
container=$("${BUILDAH[@]}" from "$IMAGE")
second=$("${BUILDAH[@]}" from "$IMAGE")
rootfs=$("${BUILDAH[@]}" mount "$container")
second_rootfs=$("${BUILDAH[@]}" mount "$second")
"${BUILDAH[@]}" inspect --type image "$IMAGE" > "$work/image.json"
python .ci/container_check.py --rootfs "$rootfs" --second-rootfs "$second_rootfs" \
    --image-config "$work/image.json" --work "$work"
echo "== container: all done in $(( $(date +%s) - started )) s"
