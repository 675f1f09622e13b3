#!/usr/bin/env bash
# The host tools `make test` and `make demo` need beyond Python and Go, installed where missing:
#   ip (iproute2), flock/mount (util-linux, mount)   the local cluster's bridge, build locks, unmounting on `down`
#   lua5.1                                           the ArgoCD health check is tested in real Lua 5.1
# Installing needs root and apt-get (Debian/Ubuntu); otherwise it names what is missing and exits 1.
# `scripts/system-deps.sh check` only reports (exit 1 when something is missing).
# `scripts/system-deps.sh [install|check] images` adds what images/build.sh and tests/images need:
#   mmdebstrap (the base root filesystem), buildah (the image build), runc (the tests run the images)
# `scripts/system-deps.sh [install|check] node` adds what the local cluster's node (kubelet + containerd) needs:
#   runc, the CNI plugins (bridge, host-local, loopback, portmap), iptables (kube-proxy), gcc + buildah
#   (e2e/node/build.sh builds the static pause binary and its image)
set -euo pipefail
declare -A package_of=([ip]=iproute2 [flock]=util-linux [mount]=mount [lua5.1]=lua5.1
  [mmdebstrap]=mmdebstrap [buildah]=buildah [runc]=runc [gcc]=gcc [iptables]=iptables)
tools=(ip flock mount lua5.1)
[ "${2:-}" = images ] && tools+=(mmdebstrap buildah runc)
[ "${2:-}" = node ] && tools+=(runc iptables gcc buildah)
missing=()
if [ "${2:-}" = node ] && [ ! -x /usr/lib/cni/bridge ] && [ ! -x /opt/cni/bin/bridge ]; then
  missing+=(containernetworking-plugins)
fi
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null && continue
  case " ${missing[*]-} " in *" ${package_of[$tool]} "*) ;; *) missing+=("${package_of[$tool]}") ;; esac
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "${1:-install}" = check ]; then
  echo "system-deps: missing packages: ${missing[*]}" >&2; exit 1
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${missing[*]}; install them (as root: apt-get install ${missing[*]}) and run again" >&2
  exit 1
fi
echo "system-deps: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >/dev/null
