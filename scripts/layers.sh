#!/usr/bin/env bash
# Checks the module structure from the `crate::`/`super::`/`self::` paths of every source file
# (test modules left out): no two files import each other, and the bottom layers of the engine
# (host/, tar/) import nothing above them (tar/ may use host/, host/ nothing but itself).
# Re-exports (`pub use host::sys;`) are followed to the file that defines the module.
# Then checks the shim's front door: every `cpengine::` path in shim/src (comments left out,
# tests included) is under the engine's deliberate public API, the allowlist below.
# Usage: scripts/layers.sh [-v]   (-v also lists every edge and the shim's engine paths)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - "$@" <<'PY'
import os, re, sys

verbose = "-v" in sys.argv[1:]
CRATES = ["engine/src", "shim/src", "cli/src"]
BOTTOM = {"host": {"host"}, "tar": {"tar", "host"}}  # layer -> what it may import

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{[^}]*\})?")
USE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M)

def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)

def code_of(path):
    text = open(path, encoding="utf-8").read()
    # Unit tests import freely; the structure is the non-test code.
    m = re.search(r"^\s*#\[cfg\(test\)\]\s*\n\s*mod \w+\s*\{", text, re.M)
    if m:
        text = text[: m.start()]
    out = []
    for line in text.splitlines():
        s = line.lstrip()
        if s.startswith("//"):
            continue
        out.append(re.sub(r"\s//.*$", "", line))
    return "\n".join(out)

def base(kind, mod, is_dir_mod):
    if kind == "crate":
        return ()
    if kind == "self":
        return mod
    return mod[:-1]

def paths_in(code, mod):
    for m in PATH.finditer(code):
        kind, rest, group = m.group(1), m.group(2), m.group(3)
        segs = [s for s in rest.split("::") if s]
        b = list(base(kind, mod, False))
        # super::super::x
        while segs and segs[0] == "super":
            b = b[:-1]
            segs = segs[1:]
        full = b + segs
        if group:
            for item in group[3:-1].split(","):
                item = item.strip().split(" as ")[0].split("::")
                if item and item[0] and item[0] != "self":
                    yield tuple(full + item)
                elif item and item[0] == "self":
                    yield tuple(full)
        else:
            yield tuple(full)

failed = False
for src in CRATES:
    files = {}
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs") and "/bin/" not in os.path.join(d, n) + "/":
                p = os.path.join(d, n)
                files[module_of(src, p)] = p
    codes = {m: code_of(p) for m, p in files.items()}
    alias = {}

    def resolve(path):
        # The longest prefix naming a module (through re-exports); the rest are items.
        for i in range(len(path), -1, -1):
            pre = tuple(path[:i])
            seen = 0
            while pre in alias and seen < 10:
                pre = alias[pre]
                seen += 1
            if pre in files:
                return pre
        return ()

    # Re-exports of modules: `pub use host::sys;`, `use crate::tar::format as tarfmt;`.
    for _ in range(3):
        for mod, code in codes.items():
            for u in USE.finditer(code):
                body = " ".join(u.group(1).split())
                m = re.match(r"^(crate::|super::|self::)?([\w:]*?)(?:::\{([^}]*)\}|(?: as (\w+))?)$", body)
                if not m:
                    continue
                prefix, p, group, rename = m.groups()
                kind = (prefix or "self::")[:-2]
                b = list(base(kind, mod, False))
                segs = [s for s in p.split("::") if s]
                while segs and segs[0] == "super":
                    b, segs = b[:-1], segs[1:]
                items = []
                if group:
                    for it in group.split(","):
                        it = it.strip()
                        if not it:
                            continue
                        parts = it.split(" as ")
                        items.append((segs + parts[0].split("::"), parts[-1].split("::")[-1]))
                elif segs:
                    items.append((segs, rename or segs[-1]))
                for target, name in items:
                    full = tuple(b + target)
                    r = resolve(full)
                    if r == full and r != mod + (name,):
                        alias[mod + (name,)] = r

    edges = {}
    for mod, code in codes.items():
        for p in paths_in(code, mod):
            t = resolve(p)
            # The crate root only declares modules and re-exports: not an edge.
            if t != mod and t != ():
                edges.setdefault(mod, set()).add(t)

    name = lambda m: files[m]
    if verbose:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{name(a)} -> {name(b)}")
    for a in sorted(edges):
        for b in sorted(edges[a]):
            if a < b and a in edges.get(b, ()):
                print(f"cycle: {name(a)} <-> {name(b)}")
                failed = True
    if src == "engine/src":
        for a in sorted(edges):
            layer = a[0] if a else ""
            if layer in BOTTOM:
                for b in sorted(edges[a]):
                    if not b or b[0] not in BOTTOM[layer]:
                        print(f"upward import from the bottom layer: {name(a)} -> {name(b)}")
                        failed = True

if failed:
    sys.exit(1)
print("layers: no two-file import cycles; host/ and tar/ import nothing above them")
PY

python3 - "$@" <<'PY'
import os, re, sys

verbose = "-v" in sys.argv[1:]
SRC = os.environ.get("SHIM_SRC", "shim/src")
# The engine's public API as the shim may use it: whole public modules, the container types
# and their front door on `Engine`, the error types the shim maps to gRPC codes, and the few
# named host helpers a process supervisor needs (pid identity, subreaper, fd placement,
# atomic write, the log relay), and the one confined exec and containment of a container.
ALLOW = """
Engine Error ErrorClass ImageError Result
ContainerCheckpointOptions ContainerRestoreOptions CheckpointDir ImageInfo PodInfo
archive oci options policy
container::Container container::ContainerError container::Status container::StateRoot
container::DumpedNamespaces container::LockError container::restore::mount_overlay
container::binds::is_bind container::binds::is_runtime_managed
container::relay::spawn container::relay::reopen container::relay::run_if_relay
container::exec container::containment
criu::CriuError rootfs::RootfsError
proc::is_same_process proc::start_time proc::task_state
sys::set_child_subreaper sys::dup_at_least host::fs::write_atomic
""".split()
ALLOW = [tuple(a.split("::")) for a in ALLOW]

PATH = re.compile(r"\bcpengine((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{[^}]*\})?", re.S)

def code_of(path):
    out = []
    for line in open(path, encoding="utf-8").read().splitlines():
        if line.lstrip().startswith("//"):
            continue
        out.append(re.sub(r"\s//.*$", "", line))
    return "\n".join(out)

paths = {}
for d, _, names in os.walk(SRC):
    for n in sorted(names):
        if not n.endswith(".rs"):
            continue
        f = os.path.join(d, n)
        for m in PATH.finditer(code_of(f)):
            base = [s for s in m.group(1).split("::") if s]
            items = [[]]
            if m.group(2):
                items = []
                for it in m.group(2)[3:-1].split(","):
                    it = it.strip().split(" as ")[0].strip()
                    if it and it != "self":
                        items.append(it.split("::"))
                    elif it == "self":
                        items.append([])
            for it in items:
                p = tuple(base + it)
                if p:
                    paths.setdefault(p, set()).add(f)

def allowed(p):
    return any(p[: len(a)] == a for a in ALLOW)

bad = sorted(p for p in paths if not allowed(p))
if verbose:
    for p in sorted(paths):
        print("cpengine::" + "::".join(p))
    print(f"{len(paths)} distinct cpengine:: paths in {SRC}")
for p in bad:
    print(f"shim reaches past the engine's public API: cpengine::{'::'.join(p)} ({', '.join(sorted(paths[p]))})")
if bad:
    sys.exit(1)
print(f"front door: the shim's {len(paths)} cpengine:: paths are all under the public API allowlist")
PY
