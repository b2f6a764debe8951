#!/usr/bin/env bash
# The cpengine demo: a real busybox container (runc, overlay rootfs) counts in memory and
# changes files; cpengine checkpoints it to a Kubernetes-style checkpoint archive while it keeps
# running, inspects the archive, and — after the original is deleted — restores it from the
# archive: the counter carries on from its checkpointed value and the file changes are there.
# Installs what it needs first (scripts/setup.sh). Must run as root: CRIU and runc need it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="/usr/local/sbin:$PATH"
cargo build --locked --release -p cpengine-cli >&2
CPENGINE="$PWD/target/release/cpengine"

work=$(mktemp -d /var/tmp/cpengine-demo.XXXXXX)
export CPENGINE_STATE_ROOT="$work/state"
RUNC=(runc --root "$work/runc")
cleanup() {
  "$CPENGINE" delete --force demo-restored >/dev/null 2>&1 || true
  "${RUNC[@]}" kill demo KILL >/dev/null 2>&1 || true
  "${RUNC[@]}" delete --force demo >/dev/null 2>&1 || true
  umount -l "$work/bundle/rootfs" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
counter() { cat "$1/tmp/counter" 2>/dev/null || echo "-"; }

say "cpengine check"
"$CPENGINE" check

say "a busybox container on an overlay rootfs (base image + writable layer)"
base="$work/base"
mkdir -p "$base"/{bin,proc,sys,dev,tmp,etc,root} "$work"/{upper,ovl-work,bundle/rootfs}
cp /bin/busybox "$base/bin/busybox"
for applet in sh sleep echo cat rm ls; do ln -s busybox "$base/bin/$applet"; done
echo "hello from the base image" > "$base/etc/motd"
echo "this file will be deleted" > "$base/etc/to-delete"
mount -t overlay overlay \
  -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl-work" "$work/bundle/rootfs"
(cd "$work/bundle" && runc spec)
# The counter lives in the shell's memory; /tmp/counter only mirrors it.
# shellcheck disable=SC2016 # expanded by the container's shell
script='i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; echo "tick $i"; sleep 0.2; done'
jq --arg s "$script" --arg root "$work/bundle/rootfs" '
  .process.terminal = false | .process.args = ["sh", "-c", $s] | .root.path = $root
  | .root.readonly = false
  | .process.rlimits = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]' \
  "$work/bundle/config.json" > "$work/bundle/config.json.new"
mv "$work/bundle/config.json.new" "$work/bundle/config.json"
# Its output goes through a pipe (CRIU cannot checkpoint a container writing to a host file).
(cd "$work/bundle" && "${RUNC[@]}" run -d demo > >(cat > "$work/demo.out") 2>&1 </dev/null)
sleep 1.5
"${RUNC[@]}" list
echo "counter: $(counter "$work/bundle/rootfs")"

say "the container changes its filesystem"
"${RUNC[@]}" exec demo sh -c \
  'echo "changed inside the container" > /etc/motd; rm /etc/to-delete; echo "notes written before the checkpoint" > /root/notes.txt'
echo "/etc/motd: $(cat "$work/bundle/rootfs/etc/motd"); /etc/to-delete removed; /root/notes.txt written"

say "cpengine checkpoint demo --output $work/demo.tar (the container keeps running)"
"$CPENGINE" checkpoint demo --runc-root "$work/runc" --output "$work/demo.tar"
checkpointed=$(counter "$work/bundle/rootfs")
sleep 1
echo "counter right after the checkpoint: $checkpointed; a second later: $(counter "$work/bundle/rootfs")"

say "cpengine inspect $work/demo.tar"
"$CPENGINE" inspect "$work/demo.tar"
say "cpengine inspect --ps-tree --files (read from the CRIU images in the archive)"
"$CPENGINE" inspect "$work/demo.tar" --ps-tree --files

say "deleting the original container"
"${RUNC[@]}" kill demo KILL
sleep 0.5
"${RUNC[@]}" delete --force demo
killed_at=$(counter "$work/bundle/rootfs")
umount -l "$work/bundle/rootfs"
echo "gone (its counter had reached $killed_at)"

say "cpengine restore $work/demo.tar --id demo-restored --rootfs-base $base"
"$CPENGINE" restore "$work/demo.tar" --id demo-restored --rootfs-base "$base"
"$CPENGINE" ps
rootfs="$work/state/run/containers/demo-restored/rootfs"

say "the restored container continues from its checkpoint (counter was $checkpointed)"
first=""
for _ in 1 2 3 4 5; do
  sleep 0.3
  c=$(counter "$rootfs"); first=${first:-$c}
  echo "counter: $c"
done
echo "/etc/motd:        $(cat "$rootfs/etc/motd")"
echo "/root/notes.txt:  $(cat "$rootfs/root/notes.txt")"
if [ -e "$rootfs/etc/to-delete" ]; then echo "/etc/to-delete:   present (WRONG)"; else echo "/etc/to-delete:   still deleted"; fi
echo "its output (CRI log format):"
tail -n 3 "$work/state/lib/containers/demo-restored/container.log"

if [ "$first" -ge "$checkpointed" ] && [ "$first" -lt "$killed_at" ] \
   && [ "$(counter "$rootfs")" -gt "$first" ] \
   && grep -q "changed inside the container" "$rootfs/etc/motd" \
   && [ ! -e "$rootfs/etc/to-delete" ] && [ -f "$rootfs/root/notes.txt" ]; then
  echo "OK: memory state (counter resumed at $first, checkpoint $checkpointed) and file changes came back"
else
  echo "FAILED: the restored container did not continue as expected" >&2
  exit 1
fi

say "cpengine delete --force demo-restored"
"$CPENGINE" delete --force demo-restored
