#!/usr/bin/env bash
# Builds the kubetune images as OCI archives with buildah: no Docker engine, no registry, no network inside a
# build step.
#   base      Debian bookworm (Python 3.11, the Python CI tests constraints.txt with), made by mmdebstrap
#   wheels    the project's wheel + its pinned dependencies, downloaded on the host (pip download, -c constraints.txt)
#   image     buildah bud --isolation chroot of images/<name>/Containerfile, FROM the base, pip install --no-index
#   deps      the runtime only: its dependencies (5.6 GB) are the Containerfile's `deps` stage, built once per
#             set of pins into buildah's storage (localhost/kubetune/runtime-deps:<hash>); a change to
#             kubetune's code rebuilds only the final stage, kubetune's own wheel on top of it
#
# usage: images/build.sh [operator|runtime]            build if needed; prints the OCI archive's path last
#        images/build.sh path <name>                   print where the archive is (or would be), build nothing
#        images/build.sh deps-key                      print the hash that names the runtime's deps image
#        images/build.sh verify-reproducible <name>    build it again from the same inputs into a scratch
#                                                      directory and compare with the cached archive
#                                                      (manifest, config, layer digests, file lists)
#
# Everything lives outside the repository, keyed by a hash of everything that decides the image:
#   ${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/images/<name>-<hash>/<name>.oci.tar  (+ build.json: times, size)
# A warm build (archive present for that hash) does nothing. Builds are serialised by a lock in that directory
# (.build.lock), so two checkouts or two test runs never build the same image twice at once: the second waits,
# then finds the archive. Needs root, mmdebstrap, buildah (scripts/system-deps.sh images installs them).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE_ROOT="${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/images"
SUITE=bookworm
PYTHON_VERSION=3.11  # bookworm's python3: the wheelhouse is downloaded for it by a host Python of the same version
MIRROR="${KUBETUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# libstdc++6: torch, pyarrow and other C++ wheels link it (found by tests/images running the runtime image).
BASE_PACKAGES=python3,python3-venv,ca-certificates,libstdc++6
# Fixed timestamps, so two builds from the same inputs give the same files (mmdebstrap and buildah honour it).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1767225600}"  # 2026-01-01T00:00:00Z
PY="${PYTHON:-$REPO/.venv/bin/python}"
BUILD_CONSTRAINTS="$HERE/build-constraints.txt"  # the pinned build backends of the wheels built on the host
# The images' tag and version label: the project's version (the Helm chart's appVersion names the same).
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)"

log() { printf 'images: %s\n' "$*" >&2; }

# Free space a build needs at its peak on the cache's filesystem (which holds /var/tmp here): the runtime's was
# measured at 28.3 GB (images/README.md): the wheelhouse, the build container's virtualenv, buildah's temporary
# copy of it in /var/tmp while committing, and the committed layer.
# The runtime's final stage on a cached deps image needs room for its archive (3.1 GB) and push's temporary copy.
min_free_gb() { case "$1" in operator) echo 2 ;; runtime-deps) echo 30 ;; runtime) echo 8 ;; esac; }

extras_of() { case "$1" in operator) echo operator ;; runtime) echo runtime,tracking,cloud ;; *) log "unknown image: $1"; exit 2 ;; esac; }

base_key() {  # the suite, the mirror, the packages and the two functions that make the base
  printf '%s\n' "$SUITE" "$MIRROR" "$BASE_PACKAGES" "$(sed -n '/^base_rootfs()/,/^}/p;/^base_image()/,/^}/p' "${BASH_SOURCE[0]}")" \
    | sha256sum | cut -c1-16
}

wheel_sources() {  # the files kubetune's wheel is built from, relative to the checkout, one a line: the
  # packages' files that git tracks or would (not ignored ones, not deleted ones), pyproject.toml, README.md
  (cd "$REPO" && { printf '%s\n' pyproject.toml README.md
    git ls-files -co --exclude-standard -- runtime/kubetune operator/kubetune_operator \
      | grep -v -e __pycache__ -e '\.pyc$' | LC_ALL=C sort | while IFS= read -r f; do [ -f "$f" ] && echo "$f"; done; })
}

image_key() {  # the Containerfile, this script, the pins and every file that goes into the project's wheel
  local name=$1
  {
    base_key
    cat "$HERE/$name"/* "${BASH_SOURCE[0]}" "$BUILD_CONSTRAINTS" "$REPO/constraints.txt"
    (cd "$REPO" && wheel_sources | xargs -d '\n' sha256sum)
  } | sha256sum | cut -c1-16
}

deps_key() {  # the runtime's deps stage: the base, the pins, that stage of the Containerfile, the functions that
  # download its wheelhouse and build it, and pyproject.toml (kubetune's requirements and extras)
  {
    base_key
    sed '/^FROM \${DEPS}/q' "$HERE/runtime/Containerfile"
    sed -n '/^host_wheel()/,/^}/p;/^wheel_sources()/,/^}/p;/^project_wheel()/,/^}/p;/^wheelhouse()/,/^}/p;/^deps_image()/,/^}/p;/^extras_of()/p' "${BASH_SOURCE[0]}"
    cat "$BUILD_CONSTRAINTS" "$REPO/constraints.txt" "$HERE/runtime/constraints-cuda.txt" "$REPO/pyproject.toml"
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
    # --timestamp: the base's history entry is dated SOURCE_DATE_EPOCH too, so a remade base is the same image
    buildah_ commit --quiet --rm --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "$ref" >/dev/null
    rm -f "$tar"
    # older bases (other package lists) are intermediates too
    buildah_ images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/kubetune/base:$SUITE-" | grep -v -x "$ref" \
      | xargs -r buildah --root "$CACHE_ROOT/storage-$STORAGE_DRIVER" --storage-driver "$STORAGE_DRIVER" rmi >/dev/null || true
  fi
  buildah_ tag "$ref" "localhost/kubetune/base:$SUITE"
  buildah_ rmi --prune >/dev/null 2>&1 || true  # untagged leftovers of earlier bases and builds
}

deps_image() {  # builds the runtime's deps stage into buildah's storage unless present; prints its name
  local ref dir
  ref="localhost/kubetune/runtime-deps:$(deps_key)"
  if ! buildah_ inspect --type image "$ref" >/dev/null 2>&1; then
    dir="$CACHE_ROOT/runtime-deps-build"
    rm -rf "$dir"
    mkdir -p "$dir/context"
    check_free_space runtime-deps "$dir"
    log "runtime: deps wheelhouse (pins changed or no deps image yet)"
    wheelhouse runtime "$dir/context/wheels"
    log "runtime: deps stage, buildah bud --target deps ($STORAGE_DRIVER)"
    buildah_ bud --quiet --isolation chroot --pull-never --layers=false --timestamp "$SOURCE_DATE_EPOCH" \
      --target deps -f "$HERE/runtime/Containerfile" -t "$ref" "$dir/context" >/dev/null
    rm -rf "$dir"
    # deps images of other pins: each is 5.6 GB, and a pin change back rebuilds (builds hold the lock)
    buildah_ images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/kubetune/runtime-deps:' | grep -v -x "$ref" \
      | xargs -r buildah --root "$CACHE_ROOT/storage-$STORAGE_DRIVER" --storage-driver "$STORAGE_DRIVER" rmi >/dev/null || true
  fi
  echo "$ref"
}

host_wheel() {  # pip wheel on the host, its isolated build environments held to images/build-constraints.txt
  # PIP_BUILD_CONSTRAINT for pip >= 25.3 (which keeps PIP_CONSTRAINT out of build environments), PIP_CONSTRAINT
  # for older pips (which apply it there too): the wheel's content must not depend on the host's pip either.
  # --no-cache-dir: pip's wheel cache would hand back a wheel built earlier by whatever backend was newest then
  # (its key ignores build constraints); what is rebuilt is small (deepspeed's sdist, the backends).
  # PYTHONHASHSEED=0: deepspeed's setup.py gathers its "all" extra in a set, so its METADATA's order followed
  # the hash seed of each build (two deps layers differed by that alone, 2026-12-05).
  PYTHONHASHSEED=0 PIP_BUILD_CONSTRAINT="$BUILD_CONSTRAINTS" PIP_CONSTRAINT="$BUILD_CONSTRAINTS" \
    "$PY" -m pip wheel --no-cache-dir "$@"
}

unpinned_wheels() {  # $1: a wheelhouse, then constraints files: the wheels' names that no file pins, one a line
  # Names compared in their normalized form (PEP 503: lower case, runs of -_. as -); kubetune is the checkout.
  local norm='s/[-_.]\+/-/g'
  LC_ALL=C comm -23 \
    <(find "$1" -maxdepth 1 -name '*.whl' -printf '%f\n' | cut -d- -f1 | tr 'A-Z' 'a-z' | sed "$norm" | grep -v -x kubetune | LC_ALL=C sort -u) \
    <(sed -n 's/^[[:space:]]*\([A-Za-z0-9._-]*\)[[:space:]]*==.*/\1/p' "${@:2}" | tr 'A-Z' 'a-z' | sed "$norm" | LC_ALL=C sort -u)
}

project_wheel() {  # $1: directory. kubetune's wheel, built on the host from the checkout; prints its path
  # Built from a copy of exactly the files the cache key hashes (wheel_sources): built in the checkout,
  # setuptools' ignored build/ directory would add files deleted since an earlier build (it did, 2026-12-05).
  local src="$1/../wheel-src"
  rm -rf "$src"
  mkdir -p "$1" "$src"
  wheel_sources | (cd "$REPO" && xargs -d '\n' cp --parents -t "$src")
  # setuptools' deprecation notices go to the log, not the terminal
  host_wheel --quiet --no-deps --wheel-dir "$1" "$src" 2>"$1/../pip-wheel.log"
  rm -rf "$src"
  echo "$1"/kubetune-*.whl
}

wheelhouse() {  # $1: image name, $2: directory. Binary wheels only: nothing compiles inside the image.
  local extras wheel
  extras="$(extras_of "$1")"
  # pip downloads the wheels its own interpreter can install (cp311 for 3.11): they must be the image's.
  if ! "$PY" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$PYTHON_VERSION')"; then
    log "the wheelhouse needs a host Python $PYTHON_VERSION (the image's); $PY is not: set PYTHON=python$PYTHON_VERSION"
    exit 2
  fi
  wheel="$(project_wheel "$2")"
  if [ "$1" = runtime ]; then
    # The GPU stack too (one image for CPU and GPU nodes), flash-attn left out (source only). deepspeed is an
    # sdist: built here as a pure-Python wheel (DS_BUILD_OPS=0; its setup runs without torch, CUDA ops build at first use).
    "$PY" -m pip download --quiet --only-binary=:all: --dest "$2" -c "$REPO/constraints.txt" \
      -c "$HERE/runtime/constraints-cuda.txt" "$wheel[$extras]" bitsandbytes liger-kernel kernels
    DS_BUILD_OPS=0 host_wheel --quiet --no-deps --wheel-dir "$2" \
      -c "$HERE/runtime/constraints-cuda.txt" deepspeed 2>>"$2/../pip-wheel.log"
    "$PY" -m pip download --quiet --only-binary=:all: --dest "$2" -c "$REPO/constraints.txt" \
      -c "$HERE/runtime/constraints-cuda.txt" "$(echo "$2"/deepspeed-*.whl)"
  else
    "$PY" -m pip download --quiet --only-binary=:all: --dest "$2" -c "$REPO/constraints.txt" "$wheel[$extras]"
  fi
  # A dependency that no constraints file pins comes in at its newest version: the image would depend on the
  # day it was built (a new dependency of a pinned package does this without any change here).
  local unpinned pins=("$REPO/constraints.txt")
  [ "$1" = runtime ] && pins+=("$HERE/runtime/constraints-cuda.txt")  # the files its downloads were held to
  unpinned="$(unpinned_wheels "$2" "${pins[@]}" | paste -sd' ')"
  if [ -n "$unpinned" ]; then
    log "$1: the wheelhouse holds $unpinned, which no constraints file pins: pin the versions pip chose"
    log "(ls $2) in constraints.txt, or images/runtime/constraints-cuda.txt for what only the GPU stack needs"
    exit 2
  fi
}

build() {  # the cached archive for the current inputs, built under the lock if absent
  local name=$1 out
  out="$(archive_path "$name")"
  if [ ! -f "$out" ]; then
    mkdir -p "$CACHE_ROOT"
    exec 9>"$CACHE_ROOT/.build.lock"
    if ! flock --nonblock 9; then
      log "$name: another build holds $CACHE_ROOT/.build.lock; waiting"
      flock 9
    fi
    if [ -f "$out" ]; then
      log "$name: built by the build we waited for"
    else
      build_into "$name" "$out"
      evict "$name"
    fi
    exec 9>&-
  else
    log "$name: cached ($out)"
  fi
  echo "$out"
}

evict() {  # keeps the newest ${KUBETUNE_IMAGES_KEEP:-2} archives of this image (two checkouts at different commits share the cache)
  find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -name "$1-*" -printf '%T@ %p\n' | sort -rn \
    | tail -n +"$((${KUBETUNE_IMAGES_KEEP:-2} + 1))" | cut -d' ' -f2- | xargs -r -d '\n' rm -rf
}

build_into() {  # $1: image name, $2: the OCI archive to write (+ build.json next to it). Holds the lock.
  local name=$1 out=$2 dir tag start size revision
  dir="$(dirname "$out")"
  tag="localhost/kubetune/$name:$(basename "$dir")"
  start=$(date +%s)
  rm -rf "$dir"
  mkdir -p "$dir/context"
  check_free_space "$name" "$dir"
  # A failed build leaves nothing behind: the wheelhouse alone is 2.8 GB for the runtime image.
  trap "rm -rf '$dir'" EXIT
  pick_storage_driver
  base_image
  local from=() deps
  if [ "$name" = runtime ]; then
    # the deps image stays cached even if this build fails (trap's cleanup is this build's directory)
    deps="$(deps_image)"
    from=(--build-arg "DEPS=$deps")
    project_wheel "$dir/context/wheels" >/dev/null
    cp "$HERE/runtime/check_gpu_stack.py" "$dir/context/"
  else
    log "$name: wheelhouse"
    wheelhouse "$name" "$dir/context/wheels"
  fi
  log "$name: buildah bud ($STORAGE_DRIVER)"
  # The label names the commit that first built these inputs; the key leaves the commit out on purpose (a
  # commit that changes none of the inputs reuses the archive), so verify-reproducible passes the cached one.
  revision="${KUBETUNE_IMAGE_REVISION:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)}"
  buildah_ bud --quiet --isolation chroot --pull-never --layers=false --timestamp "$SOURCE_DATE_EPOCH" \
    "${from[@]}" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision" --build-arg "CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%FT%TZ)" \
    -f "$HERE/$name/Containerfile" -t "$tag" "$dir/context" >/dev/null
  rm -rf "$dir/context"  # before the push: it writes the compressed layers twice (a temporary layout, the tar)
  buildah_ push --quiet "$tag" "oci-archive:$out.part:ghcr.io/kubetune/$name:$VERSION"
  mv "$out.part" "$out"
  # The archive is the product; the copy in buildah's storage is an intermediate.
  buildah_ rmi "$tag" >/dev/null
  build_report "$out" "$name" "$(basename "$dir")" "$STORAGE_DRIVER" "$(($(date +%s) - start))" >"$dir/build.json"
  trap - EXIT
  log "$name: built in $(($(date +%s) - start)) s: $out"
  log "$name: $(tr -d ' \n' <"$dir/build.json")"
}

check_free_space() {  # $1: image name, $2: a directory on the cache's filesystem. Refuses before filling a disk.
  local need have
  need="${KUBETUNE_IMAGES_MIN_FREE_GB:-$(min_free_gb "$1")}"
  have=$(($(df --output=avail -B1 "$2" | tail -1) / 1000000000))
  if [ "$have" -lt "$need" ]; then
    log "$1: needs ${need} GB free under $CACHE_ROOT at its peak, $have GB are (KUBETUNE_IMAGES_MIN_FREE_GB overrides)"
    rm -rf "$2"
    exit 3
  fi
}

verify_reproducible() {  # $1: image name. Exit 0 when a second build from the same inputs is the same image.
  local name=$1 cached scratch
  cached="$(build "$name" | tail -1)"
  scratch="$CACHE_ROOT/verify-$name"  # (its name is the scratch image's tag: no leading dot)
  KUBETUNE_IMAGE_REVISION="$(tar -xOf "$cached" index.json | "$PY" -c '
import json, sys, tarfile
digest = lambda d: "blobs/sha256/" + d.split(":")[1]
with tarfile.open(sys.argv[1]) as oci:
    manifest = json.load(oci.extractfile(digest(json.load(sys.stdin)["manifests"][0]["digest"])))
    config = json.load(oci.extractfile(digest(manifest["config"]["digest"])))
print(config["config"]["Labels"]["org.opencontainers.image.revision"])' "$cached")"
  export KUBETUNE_IMAGE_REVISION
  exec 9>"$CACHE_ROOT/.build.lock"
  flock 9
  # Remaking the base too (mmdebstrap again) checks that the Debian root filesystem is reproducible, at the
  # price of the mirror's state: a package update between the two builds is a real difference.
  if [ "${KUBETUNE_VERIFY_FRESH_BASE:-0}" = 1 ]; then
    pick_storage_driver
    # the runtime's deps stage is built on the base: remade too (removed first: it is the base's child)
    if [ "$name" = runtime ]; then buildah_ rmi "localhost/kubetune/runtime-deps:$(deps_key)" >/dev/null 2>&1 || true; fi
    buildah_ rmi "localhost/kubetune/base:$SUITE-$(base_key)" "localhost/kubetune/base:$SUITE" >/dev/null
  fi
  build_into "$name" "$scratch/$name.oci.tar"
  exec 9>&-
  local rc=0
  "$PY" "$HERE/compare_oci.py" "$cached" "$scratch/$name.oci.tar" || rc=$?
  rm -rf "$scratch"
  return "$rc"
}

build_report() {  # $1: archive, then name/key/driver/seconds: build.json, with the largest contributors by path
  "$PY" - "$@" <<'PY'
import collections, gzip, json, sys, tarfile
archive, name, key, driver, seconds = sys.argv[1:]

class Counting:  # counts the uncompressed bytes of a layer while tarfile streams it
    def __init__(self, f): self.f, self.n = f, 0
    def read(self, size=-1):
        data = self.f.read(size); self.n += len(data); return data

def group(path):  # what a file counts towards: a site-packages distribution (nvidia's per library) or the base
    parts = path.lstrip("./").split("/")
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1:]
        return "site-packages/" + "/".join(rest[:2] if rest[0] == "nvidia" and len(rest) > 2 else rest[:1])
    return "base: /" + "/".join(parts[:2]) if parts[0] != "opt" else "/" + "/".join(parts[:3])

total, sizes = 0, collections.Counter()
with tarfile.open(archive) as oci:
    blob = lambda d: oci.extractfile("blobs/sha256/" + d.split(":")[1])
    index = json.load(oci.extractfile("index.json"))
    manifest = json.load(blob(index["manifests"][0]["digest"]))
    for layer in manifest["layers"]:
        counting = Counting(gzip.open(blob(layer["digest"])))
        with tarfile.open(fileobj=counting, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    sizes[group(member.name)] += member.size
        while counting.read(1 << 20):
            pass
        total += counting.n
largest = [{"path": path, "bytes": size} for path, size in sizes.most_common(8)]
print(json.dumps({"image": name, "key": key, "storage_driver": driver, "cold_build_s": int(seconds),
                  "uncompressed_bytes": total, "largest": largest}, indent=1))
PY
}

case "${1:-operator}" in
  path) archive_path "${2:-operator}" ;;
  deps-key) deps_key ;;
  verify-reproducible) verify_reproducible "${2:-operator}" ;;
  *) build "${1:-operator}" ;;
esac
