#!/usr/bin/env bash
# Step 10: CRIU 4.x and the project's own prerequisites, installed exactly as on a development
# machine and in CI - by running the repository's scripts/setup.sh. That script
#   * installs the Debian packages the project needs (runc, busybox-static, podman, skopeo,
#     docker-registry, protoc and CRIU's build dependencies, ...),
#   * fetches CRIU's source tarball from the Debian mirror this VM's apt configuration names
#     (no mirror host is written anywhere), checks it against a pinned sha256, builds it and
#     installs it as /usr/local/sbin/criu,
#   * and runs `criu check` on this kernel.
# It skips whatever is already in place, so re-running this step is cheap.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root
require_debian12_amd64

# The Rust toolchain comes later (step 40) and only if cpengine is built in the VM.
CPENGINE_SETUP_NO_RUST=1 "$CPENGINE_SRC/scripts/setup.sh"

criu=/usr/local/sbin/criu
[ -x "$criu" ] || die "scripts/setup.sh did not install $criu"
version=$("$criu" --version | sed -n 's/^Version: //p')
case "$version" in
  4.*) ;;
  *) die "CRIU at $criu reports version '${version:-?}'; cpengine needs 4.x" ;;
esac

# runc (and so containerd) finds CRIU through PATH. A distribution criu earlier in PATH than
# /usr/local/sbin, or a stale one, would be the one runc runs.
first=$(command -v criu)
[ "$first" = "$criu" ] || die "'criu' in PATH is $first, not $criu: remove the older one"
if [ -x /usr/sbin/criu ]; then
  log "note: /usr/sbin/criu ($(/usr/sbin/criu --version | sed -n 's/^Version: //p')) is installed too;" \
    "services here put /usr/local/sbin first in PATH"
fi

log "CRIU $version at $criu passes 'criu check'"
