#!/usr/bin/env bash
# Tests of the provisioning helpers in vagrant/provision/lib.sh that make every step idempotent
# (install_file, write_file, fetch_verified, wait_for), run here in a scratch directory: no VM,
# no root, no network (downloads are file:// URLs).
set -euo pipefail
# shellcheck source=../provision/lib.sh
. "$(dirname "$0")/../provision/lib.sh"

tmp=$(mktemp -d /tmp/cpengine-lib-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
ok() {
  passed=$((passed + 1))
}
bad() {
  failed=$((failed + 1))
  printf 'lib_test: FAIL: %s\n' "$*" >&2
}
# check DESC CMD...: CMD must succeed.
check() {
  local desc=$1
  shift
  if "$@"; then ok; else bad "$desc"; fi
}
# expect_status WANT DESC CMD...: runs CMD (in a subshell, so that die's exit is contained).
expect_status() {
  local want=$1 desc=$2 got=0
  shift 2
  ("$@") >/dev/null 2>&1 || got=$?
  if [ "$got" = "$want" ]; then ok; else bad "$desc: exit $got, expected $want"; fi
}

# install_file: installs on first use and on a change, reports "unchanged" otherwise.
printf 'one\n' >"$tmp/src"
expect_status 0 "install_file installs a new file" install_file "$tmp/src" "$tmp/a/b/dest" 0640
check "install_file content" test "$(cat "$tmp/a/b/dest")" = one
check "install_file mode" test "$(stat -c %a "$tmp/a/b/dest")" = 640
expect_status 1 "install_file leaves an identical file alone" install_file "$tmp/src" "$tmp/a/b/dest" 0640
printf 'two\n' >"$tmp/src"
expect_status 0 "install_file replaces a changed file" install_file "$tmp/src" "$tmp/a/b/dest" 0640
check "install_file new content" test "$(cat "$tmp/a/b/dest")" = two
expect_status 1 "install_file fails on a missing source" install_file "$tmp/nothing" "$tmp/x" 0644
check "install_file created a file from a missing source" test ! -e "$tmp/x"

# write_file: the same, with the content on stdin.
write_twice() { printf 'k = v\n' | write_file "$tmp/conf" 0644; }
expect_status 0 "write_file writes a new file" write_twice
expect_status 1 "write_file leaves identical content alone" write_twice
check "write_file content" test "$(cat "$tmp/conf")" = "k = v"

# fetch_verified: downloads once, checks the sha256, keeps a bad download out of place.
printf 'payload\n' >"$tmp/upstream"
sha=$(sha256sum "$tmp/upstream" | cut -d' ' -f1)
expect_status 0 "fetch_verified downloads and verifies" fetch_verified "file://$tmp/upstream" "$sha" "$tmp/cache/p"
check "fetch_verified content" cmp -s "$tmp/upstream" "$tmp/cache/p"
rm "$tmp/upstream"
expect_status 0 "fetch_verified does not download a file it already has" \
  fetch_verified "file://$tmp/upstream" "$sha" "$tmp/cache/p"
printf 'tampered\n' >"$tmp/upstream"
expect_status 1 "fetch_verified rejects a sha256 mismatch" fetch_verified "file://$tmp/upstream" "$sha" "$tmp/cache/q"
check "fetch_verified left a mismatching download in place" test ! -e "$tmp/cache/q"
check "fetch_verified left a temporary file behind" test -z "$(find "$tmp/cache" -name 'q.*')"
expect_status 1 "fetch_verified fails on a download error" fetch_verified "file://$tmp/absent" "$sha" "$tmp/cache/r"

# wait_for: returns as soon as the condition holds; fails when time runs out.
expect_status 0 "wait_for returns when the condition holds" wait_for 3 "true" true
expect_status 1 "wait_for fails after its timeout" wait_for 1 "false" false

printf 'lib.sh helpers: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
