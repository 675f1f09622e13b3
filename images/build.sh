#!/usr/bin/env bash
# Builds the kubetune images as OCI archives with buildah: no Docker engine, no registry, no network inside a
# build step.
#   base      Debian bookworm (Python 3.11, the Python CI tests constraints.txt with), made by mmdebstrap
#   wheels    the project's wheel + its pinned dependencies, downloaded on the host (pip download, -c constraints.txt)
#   image     buildah bud --isolation chroot of images/<name>/Containerfile, FROM the base, pip install --no-index
#
# usage: images/build.sh [operator]   build if needed; prints the OCI archive's path on the last line
#        images/build.sh path operator print where the archive is (or would be), build nothing
#
# Everything lives outside the repository, keyed by a hash of everything that decides the image:
#   ${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/images/<name>-<hash>/<name>.oci.tar  (+ build.json: times, size)
# A warm build (archive present for that hash) does nothing. Needs root, mmdebstrap, buildah (scripts/system-deps.sh
# images installs them with apt-get).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE_ROOT="${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/images"
SUITE=bookworm
MIRROR="${KUBETUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# libstdc++6: torch, pyarrow and other C++ wheels link it (found by tests/images running the runtime image).
BASE_PACKAGES=python3,python3-venv,ca-certificates,libstdc++6
# Fixed timestamps, so two builds from the same inputs give the same files (mmdebstrap and buildah honour it).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1767225600}"  # 2026-01-01T00:00:00Z
PY="${PYTHON:-$REPO/.venv/bin/python}"

log() { printf 'images: %s\n' "$*" >&2; }

extras_of() { case "$1" in operator) echo operator ;; runtime) echo runtime,tracking,cloud ;; *) log "unknown image: $1"; exit 2 ;; esac; }

base_key() { printf '%s\n' "$SUITE" "$MIRROR" "$BASE_PACKAGES" "$(sed -n '/^base_rootfs()/,/^}/p' "${BASH_SOURCE[0]}")" | sha256sum | cut -c1-16; }

image_key() {  # the Containerfile, this script, the pins and every file that goes into the project's wheel
  local name=$1
  {
    base_key
    cat "$HERE/$name"/* "${BASH_SOURCE[0]}" "$REPO/constraints.txt" "$REPO/pyproject.toml" "$REPO/README.md"
    (cd "$REPO" && git ls-files -co --exclude-standard -- runtime/kubetune operator/kubetune_operator \
      | grep -v -e __pycache__ -e '\.pyc$' | LC_ALL=C sort | xargs -d '\n' sha256sum)
  } | sha256sum | cut -c1-16
}

archive_path() { echo "$CACHE_ROOT/$1-$(image_key "$1")/$1.oci.tar"; }

buildah_() {  # overlay when the kernel allows it (multi-GB layers are copied otherwise), vfs if not
  buildah --root "$CACHE_ROOT/storage-$STORAGE_DRIVER" --runroot "/run/kubetune-buildah-$STORAGE_DRIVER" \
    --storage-driver "$STORAGE_DRIVER" "$@"
}

pick_storage_driver() {
  STORAGE_DRIVER=overlay
  if ! buildah_ images >/dev/null 2>&1; then
    log "overlay storage unavailable here; using vfs"
    STORAGE_DRIVER=vfs
  fi
}

base_rootfs() {  # $1: output tar. The essential variant + Python: no apt, no shell tools beyond coreutils/dash.
  # Documentation, manuals and translations are not installed (dpkg path-exclude): nobody reads them in a pod.
  # merged-usr hook: /usr is merged by usr-is-merged instead of the usrmerge package, which pulls in 45 MB of perl.
  mmdebstrap --quiet --variant=essential --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --include="$BASE_PACKAGES" --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    "$SUITE" "$1" "$MIRROR"
}

base_image() {  # imports the base rootfs into buildah as localhost/kubetune/base:<suite> (the Containerfiles' BASE)
  local key ref tar ctr
  key="$(base_key)"
  ref="localhost/kubetune/base:$SUITE-$key"
  if ! buildah_ inspect --type image "$ref" >/dev/null 2>&1; then
    tar="$CACHE_ROOT/base-$key.tar"
    log "base: mmdebstrap $SUITE ($BASE_PACKAGES)"
    base_rootfs "$tar.part.tar"
    mv "$tar.part.tar" "$tar"
    ctr="$(buildah_ from scratch)"
    buildah_ add "$ctr" "$tar" / >/dev/null
    buildah_ config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah_ commit --quiet --rm "$ctr" "$ref" >/dev/null
    rm -f "$tar"
    # older bases (other package lists) are intermediates too
    buildah_ images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/kubetune/base:$SUITE-" | grep -v -x "$ref" \
      | xargs -r buildah --root "$CACHE_ROOT/storage-$STORAGE_DRIVER" --storage-driver "$STORAGE_DRIVER" rmi >/dev/null || true
  fi
  buildah_ tag "$ref" "localhost/kubetune/base:$SUITE"
  buildah_ rmi --prune >/dev/null 2>&1 || true  # untagged leftovers of earlier bases and builds
}

wheelhouse() {  # $1: image name, $2: directory. Binary wheels only: nothing compiles inside the image.
  local extras wheel
  extras="$(extras_of "$1")"
  mkdir -p "$2"
  # setuptools' deprecation notices go to the log, not the terminal
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$2" "$REPO" 2>"$2/../pip-wheel.log"
  wheel="$(echo "$2"/kubetune-*.whl)"
  if [ "$1" = runtime ]; then
    # The GPU stack too (one image for CPU and GPU nodes), flash-attn left out (source only). deepspeed is an
    # sdist: built here as a pure-Python wheel (DS_BUILD_OPS=0; its setup runs without torch, CUDA ops build at first use).
    "$PY" -m pip download --quiet --only-binary=:all: --dest "$2" -c "$REPO/constraints.txt" \
      -c "$HERE/runtime/constraints-cuda.txt" "$wheel[$extras]" bitsandbytes liger-kernel
    DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$2" \
      -c "$HERE/runtime/constraints-cuda.txt" deepspeed 2>>"$2/../pip-wheel.log"
    "$PY" -m pip download --quiet --only-binary=:all: --dest "$2" -c "$REPO/constraints.txt" \
      -c "$HERE/runtime/constraints-cuda.txt" "$(echo "$2"/deepspeed-*.whl)"
    cp "$HERE/runtime/check_gpu_stack.py" "$2/.."
  else
    "$PY" -m pip download --quiet --only-binary=:all: --dest "$2" -c "$REPO/constraints.txt" "$wheel[$extras]"
  fi
}

build() {
  local name=$1 out dir key start size revision
  out="$(archive_path "$name")"
  if [ -f "$out" ]; then
    log "$name: cached ($out)"
    echo "$out"; return
  fi
  dir="$(dirname "$out")"
  key="$(basename "$dir")"
  start=$(date +%s)
  # Archives of older inputs are dropped: the cache holds one image per name (they are hundreds of MB).
  mkdir -p "$CACHE_ROOT"
  find "$CACHE_ROOT" -maxdepth 1 -name "$name-*" -exec rm -rf {} +
  mkdir -p "$dir/context"
  pick_storage_driver
  base_image
  log "$name: wheelhouse"
  wheelhouse "$name" "$dir/context/wheels"
  log "$name: buildah bud ($STORAGE_DRIVER)"
  revision="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
  buildah_ bud --quiet --isolation chroot --pull-never --layers=false --timestamp "$SOURCE_DATE_EPOCH" \
    --build-arg "REVISION=$revision" --build-arg "CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%FT%TZ)" \
    -f "$HERE/$name/Containerfile" -t "localhost/kubetune/$name:$key" "$dir/context" >/dev/null
  buildah_ push --quiet "localhost/kubetune/$name:$key" "oci-archive:$out.part:ghcr.io/kubetune/$name:0.1.0"
  mv "$out.part" "$out"
  # The archive is the product; the copy in buildah's storage and the build context are intermediates.
  buildah_ rmi "localhost/kubetune/$name:$key" >/dev/null
  rm -rf "$dir/context"
  size="$(image_size "$out")"
  printf '{"image": "%s", "key": "%s", "storage_driver": "%s", "cold_build_s": %d, "uncompressed_bytes": %s}\n' \
    "$name" "$key" "$STORAGE_DRIVER" "$(($(date +%s) - start))" "$size" >"$dir/build.json"
  log "$name: built in $(($(date +%s) - start)) s, $((size / 1000000)) MB uncompressed: $out"
  echo "$out"
}

image_size() {  # sum of the uncompressed layer sizes (gzip's trailer holds each layer's size mod 2^32)
  "$PY" - "$1" <<'PY'
import gzip, json, sys, tarfile
with tarfile.open(sys.argv[1]) as oci:
    blob = lambda d: oci.extractfile("blobs/sha256/" + d.split(":")[1])
    index = json.load(oci.extractfile("index.json"))
    manifest = json.load(blob(index["manifests"][0]["digest"]))
    total = 0
    for layer in manifest["layers"]:
        with gzip.open(blob(layer["digest"])) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    print(total)
PY
}

case "${1:-operator}" in
  path) archive_path "${2:-operator}" ;;
  *) build "${1:-operator}" ;;
esac
