#!/usr/bin/env bash
# Provides containerd for the shim's proxy-mode tests and the comparison runs, without
# installing it, unpacked with `dpkg-deb -x` into a cache directory:
#
#   scripts/containerd.sh          containerd 2.1.9: Debian forky's `containerd` package (it needs
#                                  only libc6 >= 2.34 and runc, both present on bookworm), fetched
#                                  from the Debian mirror this machine's apt sources name and
#                                  checked against the sha256 in that mirror's forky Packages
#                                  index. forky is never added as an apt source.
#   scripts/containerd.sh 1.6.20   containerd 1.6.20: Debian bookworm's own `containerd` package
#                                  (a CRI runtime without CheckpointContainer), fetched with
#                                  `apt-get download` from this machine's apt sources and checked
#                                  against the sha256 pinned below. Never installed.
#
# Also builds, once, what a private containerd needs to run CRI pods offline: a tiny static
# `pause` binary and two OCI image archives made from busybox-static (the pinned sandbox image
# `localhost/cpengine-pause:1` and a workload image `localhost/busybox:latest`).
#
# Idempotent: prints the cache directory on stdout; everything else goes to stderr.
#
# Environment:
#   CPENGINE_CONTAINERD_DIR   cache directory (default /var/cache/cpengine/containerd-VERSION)
set -euo pipefail

VERSION=${1:-2.1.9}
case "$VERSION" in
  2.1.9) SUITE=forky ;;
  1.6.20)
    SUITE=bookworm
    DEB_VERSION=1.6.20~ds1-1+deb12u3
    DEB_SHA256=8669d264eeb0fcdb4a0b1ba436ab88ec5dafde4a66e1278ec279d830db4c2216
    ;;
  *) printf '[containerd] error: unsupported version %s (2.1.9 or 1.6.20)\n' "$VERSION" >&2; exit 2 ;;
esac
DIR=${CPENGINE_CONTAINERD_DIR:-/var/cache/cpengine/containerd-${VERSION}}

log() { printf '[containerd] %s\n' "$*" >&2; }
die() { printf '[containerd] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
for p in curl xz dpkg-deb sha256sum gcc busybox tar apt-get; do
  command -v "$p" >/dev/null || die "$p is required (scripts/setup.sh installs it)"
done

# The Debian archive URI from the apt configuration (debian_mirror).
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

mkdir -p "$DIR"
chmod 0700 "$DIR"

# 1. containerd itself.
if [ -x "$DIR/usr/bin/containerd" ] && "$DIR/usr/bin/containerd" --version 2>/dev/null | grep -q " $VERSION"; then
  log "containerd $VERSION already unpacked in $DIR"
elif [ "$SUITE" = bookworm ]; then
  # This machine's own suite: apt-get download fetches the .deb from its apt sources (apt checks
  # it against the signed index); the pinned sha256 makes sure it is the version tested.
  work=$(mktemp -d /var/tmp/cpengine-containerd.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  log "fetching containerd=$DEB_VERSION with apt-get download"
  get() { (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "containerd=$DEB_VERSION" >/dev/null 2>&1); }
  if ! get; then
    apt-get update -qq || die "apt-get update failed"
    get || die "apt-get download containerd=$DEB_VERSION failed"
  fi
  deb=$(find "$work" -maxdepth 1 -name 'containerd_*.deb' | head -n1)
  [ -n "$deb" ] || die "apt-get download left no containerd .deb"
  echo "$DEB_SHA256  $deb" | sha256sum -c --quiet - || die "sha256 mismatch for $(basename "$deb") (expected $DEB_SHA256)"
  rm -rf "${DIR:?}/usr"
  dpkg-deb -x "$deb" "$DIR"
  "$DIR/usr/bin/containerd" --version | grep -q " $VERSION" \
    || die "unpacked containerd does not report version $VERSION"
  log "unpacked $("$DIR/usr/bin/containerd" --version) into $DIR"
else
  mirror=$(debian_mirror) || die "no Debian mirror found in the apt configuration"
  work=$(mktemp -d /var/tmp/cpengine-containerd.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  log "reading the $SUITE package index"
  curl -fsSL --retry 3 -o "$work/Packages.xz" "$mirror/dists/$SUITE/main/binary-amd64/Packages.xz" \
    || die "cannot fetch the $SUITE Packages index"
  # The stanza of package `containerd` at upstream version $VERSION: its file and sha256.
  read -r filename sha < <(xz -dc "$work/Packages.xz" | awk -v want="$VERSION" '
    BEGIN { RS=""; FS="\n" }
    {
      pkg=""; ver=""; file=""; sum=""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^Package: /)  { pkg=substr($i, 10) }
        if ($i ~ /^Version: /)  { ver=substr($i, 10) }
        if ($i ~ /^Filename: /) { file=substr($i, 11) }
        if ($i ~ /^SHA256: /)   { sum=substr($i, 9) }
      }
      v=ver; sub(/^[0-9]+:/, "", v)
      if (pkg == "containerd" && index(v, want) == 1) { print file, sum; exit }
    }') || true
  if [ -z "${filename:-}" ] || [ -z "${sha:-}" ]; then
    die "containerd $VERSION is not in the $SUITE index"
  fi
  case "$filename" in pool/main/c/containerd/*.deb) ;; *) die "unexpected file name $filename" ;; esac
  log "fetching $(basename "$filename")"
  curl -fsSL --retry 3 -o "$work/containerd.deb" "$mirror/$filename" || die "download failed: $filename"
  echo "$sha  $work/containerd.deb" | sha256sum -c --quiet - || die "sha256 mismatch for $filename"
  rm -rf "${DIR:?}/usr"
  dpkg-deb -x "$work/containerd.deb" "$DIR"
  "$DIR/usr/bin/containerd" --version | grep -q " $VERSION" \
    || die "unpacked containerd does not report version $VERSION"
  log "unpacked $("$DIR/usr/bin/containerd" --version) into $DIR"
fi

# 2. A static pause: sleeps until a signal, exits 0 on TERM/INT.
if [ ! -x "$DIR/pause" ]; then
  cat >"$DIR/pause.c" <<'EOF'
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
	signal(SIGTERM, done);
	signal(SIGINT, done);
	for (;;)
		pause();
}
EOF
  gcc -static -Os -o "$DIR/pause" "$DIR/pause.c" || die "building pause failed"
  log "built a static pause binary"
fi

# 3. OCI image archives (an image layout in a tar), built by hand: one layer, a config, a
#    manifest and an index naming it.
oci_archive() { # out name rootfs_dir config_json
  local out=$1 name=$2 rootfs=$3 cfg=$4 w
  w=$(mktemp -d /var/tmp/cpengine-oci.XXXXXX)
  mkdir -p "$w/blobs/sha256"
  tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$w/layer.tar" .
  local ldig lsize cdig csize mdig msize
  ldig=$(sha256sum "$w/layer.tar" | cut -d' ' -f1); lsize=$(stat -c %s "$w/layer.tar")
  mv "$w/layer.tar" "$w/blobs/sha256/$ldig"
  printf '%s' "$cfg" | sed "s/@DIFFID@/sha256:$ldig/" >"$w/config.json"
  cdig=$(sha256sum "$w/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$w/config.json")
  mv "$w/config.json" "$w/blobs/sha256/$cdig"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csize" "$ldig" "$lsize" >"$w/manifest.json"
  mdig=$(sha256sum "$w/manifest.json" | cut -d' ' -f1); msize=$(stat -c %s "$w/manifest.json")
  mv "$w/manifest.json" "$w/blobs/sha256/$mdig"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"},"platform":{"architecture":"amd64","os":"linux"}}]}' \
    "$mdig" "$msize" "${name##*:}" "$name" >"$w/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$w/oci-layout"
  tar -C "$w" -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$w"
}

busybox_rootfs() { # dir
  local d=$1 a
  mkdir -p "$d"/{bin,proc,sys,dev,tmp,etc,root,var/log}
  cp "$(command -v busybox)" "$d/bin/busybox"
  for a in sh sleep echo cat ls rm mkdir touch date head dd seq wc grep hostname; do
    ln -sf busybox "$d/bin/$a"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$d/etc/passwd"
  echo 'root:x:0:' >"$d/etc/group"
  echo 'hello from the base image' >"$d/etc/motd"
}

if [ ! -f "$DIR/busybox.oci.tar" ] || [ ! -f "$DIR/pause.oci.tar" ]; then
  r=$(mktemp -d /var/tmp/cpengine-rootfs.XXXXXX)
  busybox_rootfs "$r/busybox"
  oci_archive "$DIR/busybox.oci.tar" "localhost/busybox:latest" "$r/busybox" \
    '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["@DIFFID@"]}}'
  mkdir -p "$r/pause"
  cp "$DIR/pause" "$r/pause/pause"
  oci_archive "$DIR/pause.oci.tar" "localhost/cpengine-pause:1" "$r/pause" \
    '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["@DIFFID@"]}}'
  # The busybox tree, for stores that import a directory.
  rm -rf "$DIR/busybox-rootfs"
  mv "$r/busybox" "$DIR/busybox-rootfs"
  rm -rf "$r"
  log "built the OCI archives of localhost/busybox:latest and localhost/cpengine-pause:1"
fi

echo "$DIR"
