#!/usr/bin/env bash
# Builds the container image from the top-level Dockerfile without a Docker engine (buildah, vfs
# storage, chroot isolation) and starts it without a container runtime (umoci unpack, then
# chroot), as a Kubernetes pod with runAsUser 65534 and readOnlyRootFilesystem would run it.
#
#   1. Stand-ins for the Dockerfile's base images, which cannot be pulled here:
#      - RUNTIME_BASE: the Debian packages gcr.io/distroless/cc-debian12 is made of (the list in
#        distroless' cc/ and base/ config.bzl: libc6, libssl3, libgcc-s1, libgomp1, libstdc++6,
#        gcc-12-base, and static's base-files, netbase, tzdata), fetched with mmdebstrap for this
#        machine's Debian release and unpacked without their dependencies, plus distroless'
#        users, /tmp and the CA bundle. So the size checked below is close to the real image's.
#        Without a Debian mirror (or FLOODGATE_IMAGE_TEST_BASE=ldd): only the binary's shared
#        libraries (ldd) and the CA bundle; the size check then allows for distroless' 24 MB.
#      - BUILDER: none. Compiling Rust inside a chroot build would take too long here, so the
#        Dockerfile packages the binary cargo built on this machine (--build-arg BINARY=prebuilt
#        and the build context floodgate-prebuilt, as the Dockerfile documents).
#   2. buildah builds the Dockerfile's runtime stage: its OCI labels, user, entrypoint and
#      command, ports and size (< 40 MB) are checked.
#   3. It is pushed to an OCI layout and unpacked with umoci. The entrypoint and command the
#      image records are started in a private mount namespace, under chroot into the rootfs,
#      as the image's user, with no new privileges; the rootfs bind-mounted read-only, /proc and
#      a minimal /dev mounted, the domain config mounted read-only at /etc/floodgate (where the
#      command looks, as a ConfigMap volume would be), the listeners on 127.0.0.1
#      (FLOODGATE_GRPC_ADDR and FLOODGATE_HTTP_ADDR, so the command stays the image's own).
#   4. The process runs as 65534:65534 without capabilities (/proc/PID/status); /healthcheck
#      answers 200, gRPC health SERVING; decisions: OK over HTTP (/json), OK over gRPC
#      (ShouldRateLimit with Envoy's own stubs, from xds-protos), then OVER_LIMIT; SIGTERM stops
#      it cleanly; the rootfs is, file for file, what it was before.
#
# Needs root (mounts, chroot) and buildah umoci mmdebstrap jq curl binutils python3, e.g.
#   apt-get install -y buildah umoci mmdebstrap jq curl binutils ca-certificates
# Environment:
#   FLOODGATE_BIN               the binary to package (default: cargo build --release --locked,
#                               then target/release/floodgate)
#   FLOODGATE_TEST_PYTHON       a python with grpcio and xds-protos (.ci/run's venv; default
#                               .venv/bin/python) for the gRPC checks; without one they are
#                               skipped, saying so (with CI=true they are required)
#   FLOODGATE_IMAGE_TEST_BASE   auto (default: debian, else ldd) | debian | ldd
#   FLOODGATE_IMAGE_TEST_KEEP=1 keep the work directory
#   DEBIAN_MIRROR               a mirror for mmdebstrap (default: its own, with the release's
#                               updates and security suites)
# Every process started here is stopped on exit, failure or not; only loopback traffic.
# shellcheck disable=SC2015  # `test && test || fail`: fail when either test fails, as meant
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
limit=40000000            # bytes: "under 40 MB"
distroless_cc=24000000    # bytes: gcr.io/distroless/cc-debian12, as the debian base measures it
mirror=()
[ -z "${DEBIAN_MIRROR:-}" ] || mirror=("$DEBIAN_MIRROR")
base_mode=${FLOODGATE_IMAGE_TEST_BASE:-auto}
base_ref=localhost/floodgate-test/runtime-base:latest
image_ref=localhost/floodgate:test

ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }
log() { printf '\n-- %s\n' "$*"; }

[ "$(id -u)" = 0 ] || fail "needs root (bind mounts and chroot)"
for tool in buildah umoci jq curl strip ldd python3 unshare nsenter setpriv chroot mount dpkg-deb; do
  command -v "$tool" >/dev/null ||
    fail "$tool is required (apt-get install -y buildah umoci mmdebstrap jq curl binutils)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/floodgate-image.XXXXXX")
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp"   # buildah's temporary layer files
buildah=(buildah --root "$work/storage" --runroot "$work/runroot" --storage-driver vfs)
pid=""
passed=false
cleanup() {
  if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ "$passed" != true ] && [ -s "$work/floodgate.log" ]; then
    echo "--- floodgate's log (the test failed)"
    tail -n 40 "$work/floodgate.log"
  fi
  "${buildah[@]}" rm --all >/dev/null 2>&1 || true
  if [ "${FLOODGATE_IMAGE_TEST_KEEP:-}" = 1 ]; then
    echo "kept $work"
  else
    rm -rf "$work"
  fi
}
trap 'cleanup 2>/dev/null' EXIT
trap 'exit 130' INT TERM

# --- the binary ----------------------------------------------------------------------------
log "the binary"
if [ -n "${FLOODGATE_BIN:-}" ]; then
  bin=$FLOODGATE_BIN
else
  (cd "$root" && cargo build --release --locked --bin floodgate)
  bin="${CARGO_TARGET_DIR:-$root/target}/release/floodgate"
fi
[ -x "$bin" ] || fail "no binary at $bin"
version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
# What the Dockerfile's build stage leaves in /out: the stripped binary and the ratelimit link.
mkdir -p "$work/prebuilt/bin"
strip --strip-all -o "$work/prebuilt/floodgate" "$bin"
ln -s /usr/local/bin/floodgate "$work/prebuilt/bin/ratelimit"
ok "$bin, stripped to $(stat -c %s "$work/prebuilt/floodgate") bytes (version $version)"

# --- a stand-in for RUNTIME_BASE -------------------------------------------------------------
log "runtime base stand-in"
base="$work/base"
mkdir -p "$base"
arch=$(dpkg --print-architecture)
# shellcheck disable=SC1091
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
case "$codename" in   # distroless' package lists for the release this binary was built on
  bookworm) packages=(base-files netbase tzdata libc6 libssl3 libgcc-s1 libgomp1 libstdc++6 gcc-12-base) ;;
  trixie) packages=(base-files netbase tzdata libc6 libssl3t64 libzstd1 zlib1g libgcc-s1 libgomp1 libstdc++6 gcc-14-base) ;;
  *) packages=() ;;
esac

debian_base() {
  [ ${#packages[@]} -gt 0 ] || { echo "no distroless package list for Debian '$codename'"; return 1; }
  command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed"; return 1; }
  # extract: apt downloads the packages (and their dependencies) and nothing is configured;
  # the kept .debs of distroless' list alone are then unpacked, without the dependencies.
  timeout 300 mmdebstrap --quiet --variant=extract --skip=cleanup/apt/cache \
    --architectures="$arch" --include="$(IFS=,; echo "${packages[*]}")" \
    "$codename" "$work/debs" "${mirror[@]}" >"$work/mmdebstrap.log" 2>&1 ||
    { tail -n 5 "$work/mmdebstrap.log"; return 1; }
  local package deb
  for package in "${packages[@]}"; do
    deb=$(compgen -G "$work/debs/var/cache/apt/archives/${package}_*.deb" | head -n 1) ||
      { echo "mmdebstrap fetched no $package"; return 1; }
    dpkg-deb -x "$deb" "$base"
  done
}

ldd_base() {
  local lib
  while read -r lib; do
    cp -L --parents "$lib" "$base/"
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

case "$base_mode" in
  debian) debian_base || fail "could not make the Debian base" ;;
  ldd) ldd_base ;;
  auto)
    if ! debian_base; then
      echo "note: no Debian base (above); falling back to the binary's libraries (ldd)"
      base_mode=ldd
      rm -rf "$base" && mkdir -p "$base"
      ldd_base
    else
      base_mode=debian
    fi
    ;;
  *) fail "FLOODGATE_IMAGE_TEST_BASE must be auto, debian or ldd, not '$base_mode'" ;;
esac
# What distroless adds to the packages: its users, /tmp, a home for nonroot, the CA bundle.
mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home/nonroot" "$base/root"
chmod 1777 "$base/tmp"
chmod 0700 "$base/root"
chown 65532:65532 "$base/home/nonroot"
cp /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/ca-certificates.crt"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$base/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$base/etc/group"
base_size=$(du -s --apparent-size -B1 "$base" | cut -f1)

ctr=$("${buildah[@]}" from scratch)
mnt=$("${buildah[@]}" mount "$ctr")
cp -a "$base/." "$mnt/"
"${buildah[@]}" umount "$ctr" >/dev/null
# distroless' :nonroot image config (the Dockerfile's USER must win over it).
"${buildah[@]}" config --user 65532:65532 --workingdir /home/nonroot \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$ctr"
"${buildah[@]}" commit --quiet --rm "$ctr" "$base_ref" >/dev/null
ok "$base_ref ($base_mode: $base_size bytes)"

# --- the image -------------------------------------------------------------------------------
log "buildah bud (the Dockerfile's runtime stage)"
# TARGETARCH only quiets buildah 1.28, which does not set it: the build stage is not run.
if ! "${buildah[@]}" bud --isolation chroot --pull=never --layers=false \
  --build-arg RUNTIME_BASE="$base_ref" --build-arg BINARY=prebuilt \
  --build-arg TARGETARCH="$arch" --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --build-context floodgate-prebuilt="$work/prebuilt" \
  --target runtime -t "$image_ref" -f "$root/Dockerfile" "$root" >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  fail "buildah could not build the Dockerfile"
fi
ok "built $image_ref"

config=$("${buildah[@]}" inspect --type image "$image_ref" | jq '.OCIv1.config')
check_config() {   # a jq condition on the image config, and what it means
  jq -e "$1" >/dev/null <<<"$config" || fail "image config: $2 (is: $(jq -c "${3:-.}" <<<"$config"))"
  ok "image config: $2"
}
check_config '.User == "65534:65534"' "user 65534:65534" '.User'
check_config '.Entrypoint == ["/usr/local/bin/floodgate"]' "entrypoint /usr/local/bin/floodgate" '.Entrypoint'
check_config '.Cmd == ["serve", "--config", "/etc/floodgate"]' "command serve --config /etc/floodgate" '.Cmd'
check_config '.ExposedPorts | has("8080/tcp") and has("8081/tcp")' "exposes 8080 and 8081" '.ExposedPorts'
for label in title description licenses source url documentation revision version base.name; do
  check_config ".Labels[\"org.opencontainers.image.$label\"] // \"\" | length > 0" \
    "label org.opencontainers.image.$label" '.Labels'
done
check_config ".Labels[\"org.opencontainers.image.version\"] == \"$version\"" "labelled version $version" '.Labels'
check_config ".Labels[\"org.opencontainers.image.revision\"] == \"$revision\"" "labelled revision" '.Labels'
check_config ".Labels[\"org.opencontainers.image.licenses\"] == \"Apache-2.0\"" "labelled licence Apache-2.0" '.Labels'

log "OCI layout, unpacked"
"${buildah[@]}" push --quiet "$image_ref" "oci:$work/oci:floodgate:test"
umoci unpack --image "$work/oci:floodgate:test" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"
spec="$work/bundle/config.json"
manifest=$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "floodgate:test") | .digest' "$work/oci/index.json")
compressed=$(jq '[.layers[].size] | add' "$work/oci/blobs/${manifest/://}")
size=$(du -s --apparent-size -B1 "$rootfs" | cut -f1)
own=$((size - base_size))
printf 'size: %d bytes unpacked (%d of them Floodgate'"'"'s layer), %d compressed\n' "$size" "$own" "$compressed"
if [ "$base_mode" = debian ]; then
  [ "$size" -lt "$limit" ] || fail "the image is $size bytes, not under $limit"
  ok "under $limit bytes on distroless cc's packages"
else
  [ $((own + distroless_cc)) -lt "$limit" ] ||
    fail "Floodgate's layer ($own bytes) on distroless cc ($distroless_cc) is not under $limit"
  ok "Floodgate's layer plus distroless cc's $distroless_cc bytes is under $limit"
fi

[ -f "$rootfs/usr/local/bin/floodgate" ] && [ -x "$rootfs/usr/local/bin/floodgate" ] ||
  fail "no executable /usr/local/bin/floodgate"
[ -L "$rootfs/bin/ratelimit" ] && [ "$(readlink "$rootfs/bin/ratelimit")" = /usr/local/bin/floodgate ] ||
  fail "/bin/ratelimit is not a symlink to /usr/local/bin/floodgate: $(ls -l "$rootfs/bin/ratelimit" 2>&1)"
ok "/usr/local/bin/floodgate, and /bin/ratelimit -> /usr/local/bin/floodgate"
grep -q 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt" || fail "no CA certificates"
ok "CA certificates at /etc/ssl/certs/ca-certificates.crt"

mapfile -t args < <(jq -r '.process.args[]' "$spec")
mapfile -t image_env < <(jq -r '.process.env[]' "$spec")
uid=$(jq -r '.process.user.uid' "$spec")
gid=$(jq -r '.process.user.gid' "$spec")
[ "$uid:$gid" = 65534:65534 ] || fail "the unpacked image runs as $uid:$gid"
[ "$(jq -r '.process.cwd' "$spec")" = / ] || fail "working directory $(jq -r '.process.cwd' "$spec")"

# --- started, read-only, as 65534 ------------------------------------------------------------
log "started under chroot as $uid:$gid, rootfs read-only"
# The mount points a runtime makes before it starts the process.
mkdir -p "$rootfs/proc" "$rootfs/dev" "$rootfs/etc/floodgate"
snapshot() {
  (cd "$rootfs" && find . -xdev -printf '%p\t%y\t%s\t%m\t%U:%G\t%T@\t%l\n' | LC_ALL=C sort)
}
snapshot >"$work/rootfs.before"

mkdir -p "$work/config"
cat >"$work/config/image.yaml" <<'EOF'
domain: image
descriptors:
  - key: client
    rate_limit:
      unit: day   # a window that does not end between the three requests
      requests_per_unit: 2
      name: per_client
EOF

chroot_bin=$(command -v chroot)
setpriv_bin=$(command -v setpriv)
answer=$(chroot --userspec="$uid:$gid" --groups="$gid" "$rootfs" "${args[0]}" --version)
[[ "$answer" == *"$version"* ]] || fail "--version in the image answered: $answer"
ok "the entrypoint runs in the rootfs: $answer"

read -r grpc_port http_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

# In its own mount namespace (gone with the process): the rootfs bound onto itself and remounted
# read-only, /proc, a /dev of four nodes, the config; then chroot as the image's user.
# shellcheck disable=SC2016  # expanded by the bash that runs it
launch='set -euo pipefail
rootfs=$1 config=$2 uid=$3 gid=$4 setpriv=$5 chroot=$6 count=$7
shift 7
vars=("${@:1:count}")
shift "$count"
mount --bind "$rootfs" "$rootfs"
mount -t proc -o nosuid,nodev,noexec proc "$rootfs/proc"
mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k tmpfs "$rootfs/dev"
for node in null zero random urandom; do
  : >"$rootfs/dev/$node"
  mount --bind "/dev/$node" "$rootfs/dev/$node"
done
mount --bind -o ro "$config" "$rootfs/etc/floodgate"
mount -o remount,bind,ro "$rootfs"
exec env -i "${vars[@]}" "$setpriv" --no-new-privs "$chroot" --userspec="$uid:$gid" --groups="$gid" "$rootfs" "$@"'
run_env=("${image_env[@]}" "FLOODGATE_GRPC_ADDR=127.0.0.1:$grpc_port" "FLOODGATE_HTTP_ADDR=127.0.0.1:$http_port")
unshare --mount --propagation private -- bash -c "$launch" launch "$rootfs" "$work/config" "$uid" "$gid" \
  "$setpriv_bin" "$chroot_bin" "${#run_env[@]}" "${run_env[@]}" "${args[@]}" >"$work/floodgate.log" 2>&1 &
pid=$!

deadline=$((SECONDS + 30))
until [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/healthcheck")" = 200 ]; do
  [ -d "/proc/$pid" ] && ! grep -q '^State:.*zombie' "/proc/$pid/status" 2>/dev/null ||
    fail "floodgate exited before /healthcheck answered"
  [ "$SECONDS" -lt "$deadline" ] || fail "no /healthcheck 200 within 30 s"
  sleep 0.1
done
ok "GET /healthcheck: 200"

status=$(cat "/proc/$pid/status")
cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
field() { awk -v f="$1:" '$1 == f { $1 = ""; sub(/^ /, ""); print }' <<<"$status"; }
[ "$(field Name)" = floodgate ] || fail "pid $pid is $(field Name), not floodgate"
[ "$cmdline" = "${args[*]} " ] || fail "started as '$cmdline', not the image's '${args[*]}'"
[ "$(field Uid)" = "65534 65534 65534 65534" ] || fail "Uid: $(field Uid)"
[ "$(field Gid)" = "65534 65534 65534 65534" ] || fail "Gid: $(field Gid)"
[ "$(field Groups)" = 65534 ] || fail "Groups: $(field Groups)"
[ "$(field CapEff)" = 0000000000000000 ] || fail "CapEff: $(field CapEff)"
[ "$(field NoNewPrivs)" = 1 ] || fail "NoNewPrivs: $(field NoNewPrivs)"
ok "pid $pid runs '${args[*]}' as Uid $(field Uid), Gid $(field Gid), no capabilities"
# A write in floodgate's mount namespace (as root, so only the mount can refuse it).
if refusal=$(nsenter --target "$pid" --mount -- sh -c ": >'$rootfs/probe'" 2>&1); then
  fail "the rootfs is writable in floodgate's mount namespace"
fi
[[ "$refusal" == *"Read-only file system"* ]] || fail "writing in floodgate's mount namespace: $refusal"
ok "the rootfs is read-only where floodgate runs"

log "decisions"
request='{"domain":"image","descriptors":[{"entries":[{"key":"client","value":"c1"}]}]}'
decide_json() {   # expected HTTP code, expected overallCode, expected limitRemaining
  local code
  code=$(curl -s --max-time 5 -o "$work/answer.json" -w '%{http_code}' -XPOST \
    "http://127.0.0.1:$http_port/json" -d "$request")
  [ "$code" = "$1" ] && jq -e --arg c "$2" --argjson r "$3" \
    '.overallCode == $c and ((.statuses[0].limitRemaining // 0) == $r)' "$work/answer.json" >/dev/null ||
    fail "POST /json: $code $(cat "$work/answer.json"), expected $1 $2 with $3 remaining"
  ok "POST /json: $code $(cat "$work/answer.json")"
}
decide_json 200 OK 1

python=${FLOODGATE_TEST_PYTHON:-$root/.venv/bin/python}
if [ -x "$python" ] && "$python" -c 'import grpc, envoy.service.ratelimit.v3.rls_pb2' 2>/dev/null; then
  answer=$("$python" - "127.0.0.1:$grpc_port" <<'EOF'
import sys

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

channel = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(channel).result(timeout=10)
# grpc.health.v1.Health/Check for the server as a whole: HealthCheckResponse{status: SERVING}.
health = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)
entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="client", value="c1")
response = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
    rls_pb2.RateLimitRequest(
        domain="image", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    ),
    timeout=5,
)
code = rls_pb2.RateLimitResponse.Code.Name
print(
    "health", "SERVING" if health == b"\x08\x01" else health.hex(),
    "decision", code(response.overall_code), response.statuses[0].limit_remaining,
)
EOF
  )
  [ "$answer" = "health SERVING decision OK 0" ] || fail "gRPC: $answer, expected health SERVING decision OK 0"
  ok "gRPC: grpc.health.v1 SERVING; ShouldRateLimit OK with 0 remaining"
elif [ "${CI:-}" = true ]; then
  fail "no python with grpcio and xds-protos for the gRPC checks (FLOODGATE_TEST_PYTHON=$python)"
else
  echo "note: gRPC checks skipped (no python with grpcio and xds-protos; set FLOODGATE_TEST_PYTHON)"
  decide_json 200 OK 0
fi
decide_json 429 OVER_LIMIT 0

log "SIGTERM"
kill -TERM "$pid"
deadline=$((SECONDS + 30))
while [ -d "/proc/$pid" ] && ! grep -q '^State:.*zombie' "/proc/$pid/status" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "floodgate still running 30 s after SIGTERM"
  sleep 0.1
done
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" = 0 ] || fail "floodgate exited with $rc after SIGTERM"
ok "exited 0 after SIGTERM"

snapshot >"$work/rootfs.after"
diff -u "$work/rootfs.before" "$work/rootfs.after" >"$work/rootfs.diff" ||
  { cat "$work/rootfs.diff"; fail "the rootfs changed while the image ran"; }
ok "the rootfs is file for file as before ($(wc -l <"$work/rootfs.before") entries)"

passed=true
printf '\nimage test: passed (%d bytes unpacked on the %s base, uid %s, decisions OK, OK, OVER_LIMIT)\n' \
  "$size" "$base_mode" "$uid"
