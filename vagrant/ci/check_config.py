#!/usr/bin/python3
"""Static checks of the kubeadm playground's configuration, without a VM.

Every YAML document under vagrant/ is parsed and checked for its apiVersion/kind (or, for the
non-Kubernetes YAML files, their own key fields); the containerd TOML files, the CNI network
and the systemd units are parsed too, and the files are cross-checked against each other and
against config/versions.env: the CRI socket the kubelet uses is the one the shim serves, the
shim forwards to containerd's socket, the kubelet's cgroup driver matches containerd's runc
options, the pod subnet matches the CNI range, the images live in the node-local registry, the
systemd units order containerd -> cpengine-shim -> kubelet, and so on.

The systemd units get a structural check here (sections, known directives, absolute ExecStart,
After/Before ordering); `systemd-analyze verify` runs on them as well when it is installed,
inside a scratch root that holds this machine's unit files and a stub for every program the
units start.

`--self-test` breaks copies of the files in known ways (wrong CRI socket, feature gate off,
cgroup driver mismatch, reversed unit ordering, ...) and fails unless every breakage is caught,
so a checker that can no longer fail does not go unnoticed.

Uses Debian's python3 (3.11: tomllib) and python3-yaml.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

PLAYGROUND = Path(__file__).resolve().parent.parent

CRI_SOCKET = "unix:///run/cpengine/cri.sock"
SHIM_BINARY = "/usr/local/bin/cpengine-shim"

# Keys config/versions.env must define, and the form of their values.
VERSION_KEYS = {
    "KUBERNETES_VERSION": r"\d+\.\d+\.\d+",
    "KUBERNETES_RELEASE_URL": r"https://\S+",
    "KUBEADM_SHA256": r"[0-9a-f]{64}",
    "KUBELET_SHA256": r"[0-9a-f]{64}",
    "KUBECTL_SHA256": r"[0-9a-f]{64}",
    "CONTAINERD_VERSION": r"\d+\.\d+\.\d+",
    "CONTAINERD_RELEASE_URL": r"https://\S+",
    "CONTAINERD_SHA256": r"[0-9a-f]{64}",
    "CRICTL_VERSION": r"\d+\.\d+\.\d+",
    "CRICTL_RELEASE_URL": r"https://\S+",
    "CRICTL_SHA256": r"[0-9a-f]{64}",
    "RUSTUP_VERSION": r"\d+\.\d+\.\d+",
    "RUSTUP_RELEASE_URL": r"https://\S+",
    "RUSTUP_INIT_SHA256": r"[0-9a-f]{64}",
    "REGISTRY": r"[a-z0-9.-]+:\d+",
    "WORKLOAD_IMAGE": r"\S+/\S+:\S+",
    "CHECKPOINT_IMAGE": r"\S+/\S+:\S+",
    "CPENGINE_CRI_SOCKET": r"unix:///\S+",
    "CONTAINERD_SOCKET": r"unix:///\S+",
}

# Directives the units may use, per section: a typo ("Befor=") is an error, not a silently
# ignored line.
UNIT_DIRECTIVES = {
    "Unit": {
        "Description", "Documentation", "After", "Before", "Requires", "Wants", "BindsTo",
        "PartOf", "Conflicts", "StartLimitIntervalSec", "StartLimitBurst", "ConditionPathExists",
    },
    "Service": {
        "Type", "ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop",
        "Environment", "EnvironmentFile", "Restart", "RestartSec", "Delegate", "KillMode",
        "LimitNPROC", "LimitCORE", "LimitNOFILE", "TasksMax", "OOMScoreAdjust", "User", "Group",
        "RuntimeDirectory", "RuntimeDirectoryMode", "StateDirectory", "WorkingDirectory",
        "TimeoutStartSec", "TimeoutStopSec", "NotifyAccess",
    },
    "Install": {"WantedBy", "RequiredBy", "Alias", "Also"},
}
SERVICE_TYPES = {"simple", "exec", "forking", "oneshot", "dbus", "notify", "idle"}

# Every YAML file under vagrant/ must be known here (a new one needs its expectations).
YAML_FILES = {
    "config/kubeadm.yaml",
    "config/registry.yml",
    "config/crictl.yaml",
    "manifests/counter.yaml",
    "manifests/counter-restored.yaml",
}


class Checks:
    """Runs every check over an in-memory copy of the playground's files."""

    def __init__(self, files: dict[str, str], run_systemd_analyze: bool):
        self.files = files
        self.run_systemd_analyze = run_systemd_analyze
        self.errors: list[str] = []
        self.count = 0

    # -- helpers ------------------------------------------------------------------------------
    def expect(self, cond: bool, where: str, msg: str) -> bool:
        self.count += 1
        if not cond:
            self.errors.append(f"{where}: {msg}")
        return cond

    def text(self, rel: str) -> str | None:
        t = self.files.get(rel)
        self.expect(t is not None, rel, "file is missing")
        return t

    def yaml_docs(self, rel: str) -> list:
        t = self.text(rel)
        if t is None:
            return []
        try:
            docs = [d for d in yaml.safe_load_all(t) if d is not None]
        except yaml.YAMLError as e:
            self.expect(False, rel, f"YAML does not parse: {e}")
            return []
        self.expect(bool(docs), rel, "no YAML document")
        for i, d in enumerate(docs):
            self.expect(isinstance(d, dict), rel, f"document {i} is not a mapping")
        return [d for d in docs if isinstance(d, dict)]

    def toml(self, rel: str) -> dict:
        t = self.text(rel)
        if t is None:
            return {}
        try:
            return tomllib.loads(t)
        except tomllib.TOMLDecodeError as e:
            self.expect(False, rel, f"TOML does not parse: {e}")
            return {}

    # -- the checks ---------------------------------------------------------------------------
    def run(self) -> list[str]:
        self.versions = self.check_versions()
        self.check_yaml_inventory()
        kubeadm = self.check_kubeadm()
        containerd = self.check_containerd(kubeadm)
        self.check_cni(kubeadm)
        self.check_registry()
        self.check_crictl()
        self.check_manifests()
        self.check_units(containerd)
        self.check_scripts()
        return self.errors

    def check_versions(self) -> dict[str, str]:
        rel = "config/versions.env"
        t = self.text(rel) or ""
        values: dict[str, str] = {}
        for n, line in enumerate(t.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S*)", line)
            if self.expect(m is not None, f"{rel}:{n}", f"not a plain KEY=VALUE line: {line!r}"):
                values[m.group(1)] = m.group(2)
        for key, form in VERSION_KEYS.items():
            v = values.get(key)
            if self.expect(v is not None, rel, f"{key} is not set"):
                self.expect(re.fullmatch(form, v) is not None, rel, f"{key}={v} is not of the form {form}")
        k8s = tuple(int(x) for x in values.get("KUBERNETES_VERSION", "0.0.0").split(".")[:2])
        self.expect(k8s >= (1, 30), rel, "KUBERNETES_VERSION must be >= 1.30 (ContainerCheckpoint beta, on by default)")
        ctrd = tuple(int(x) for x in values.get("CONTAINERD_VERSION", "0.0.0").split(".")[:2])
        self.expect((2, 1) <= ctrd < (2, 4), rel,
                    "CONTAINERD_VERSION must be 2.1-2.3: restore through CreateContainer came in 2.1 and is gone in 2.4")
        for img in ("WORKLOAD_IMAGE", "CHECKPOINT_IMAGE"):
            self.expect(values.get(img, "").startswith(values.get("REGISTRY", "?") + "/"), rel,
                        f"{img} is not in the node-local registry {values.get('REGISTRY')}")
        self.expect(values.get("CPENGINE_CRI_SOCKET") == CRI_SOCKET, rel,
                    f"CPENGINE_CRI_SOCKET must be the shim's default socket {CRI_SOCKET}")
        return values

    def check_yaml_inventory(self) -> None:
        found = {p for p in self.files if p.endswith((".yaml", ".yml"))}
        for p in sorted(found - YAML_FILES):
            self.expect(False, p, "YAML file without expectations: add them to vagrant/ci/check_config.py")
        for p in sorted(YAML_FILES):
            self.yaml_docs(p)  # parses every document, reports syntax errors

    def check_kubeadm(self) -> dict:
        rel = "config/kubeadm.yaml"
        expected = {
            "InitConfiguration": "kubeadm.k8s.io/v1beta4",
            "ClusterConfiguration": "kubeadm.k8s.io/v1beta4",
            "KubeletConfiguration": "kubelet.config.k8s.io/v1beta1",
        }
        by_kind: dict[str, dict] = {}
        for d in self.yaml_docs(rel):
            kind, api = d.get("kind"), d.get("apiVersion")
            if self.expect(kind in expected, rel, f"unexpected kind {kind!r} (expected one of {sorted(expected)})"):
                self.expect(api == expected[kind], rel, f"{kind} has apiVersion {api!r}, expected {expected[kind]}")
                self.expect(kind not in by_kind, rel, f"{kind} appears twice")
                by_kind[kind] = d
        for kind in expected:
            self.expect(kind in by_kind, rel, f"no {kind} document")

        init = by_kind.get("InitConfiguration", {})
        nreg = init.get("nodeRegistration") or {}
        cri = nreg.get("criSocket")
        self.expect(cri == self.versions.get("CPENGINE_CRI_SOCKET"), rel,
                    f"InitConfiguration.nodeRegistration.criSocket is {cri!r}, expected the shim's {self.versions.get('CPENGINE_CRI_SOCKET')}")
        self.expect(nreg.get("taints") == [], rel,
                    "nodeRegistration.taints must be [] on a one-node cluster (pods must schedule on it)")

        cluster = by_kind.get("ClusterConfiguration", {})
        kv = cluster.get("kubernetesVersion")
        self.expect(kv == "v" + self.versions.get("KUBERNETES_VERSION", "?"), rel,
                    f"kubernetesVersion {kv!r} differs from KUBERNETES_VERSION in config/versions.env")
        net = cluster.get("networking") or {}
        self.expect(bool(net.get("podSubnet")), rel, "networking.podSubnet is not set")

        kubelet = by_kind.get("KubeletConfiguration", {})
        gates = kubelet.get("featureGates") or {}
        self.expect(gates.get("ContainerCheckpoint") is True, rel,
                    "KubeletConfiguration.featureGates.ContainerCheckpoint must be true (a YAML boolean)")
        self.expect(kubelet.get("cgroupDriver") in ("systemd", "cgroupfs"), rel,
                    f"KubeletConfiguration.cgroupDriver is {kubelet.get('cgroupDriver')!r}")
        ep = kubelet.get("containerRuntimeEndpoint")
        self.expect(ep in (None, cri), rel, f"KubeletConfiguration.containerRuntimeEndpoint {ep!r} differs from criSocket {cri!r}")
        ie = kubelet.get("imageServiceEndpoint")
        self.expect(ie in (None, cri), rel, f"KubeletConfiguration.imageServiceEndpoint {ie!r} bypasses the shim")
        return {"criSocket": cri, "podSubnet": net.get("podSubnet"), "cgroupDriver": kubelet.get("cgroupDriver")}

    def check_containerd(self, kubeadm: dict) -> dict:
        rel = "config/containerd/config.toml"
        c = self.toml(rel)
        self.expect(c.get("version") == 3, rel, "version must be 3 (containerd 2.x)")
        address = (c.get("grpc") or {}).get("address")
        want = self.versions.get("CONTAINERD_SOCKET", "").removeprefix("unix://")
        self.expect(address == want, rel, f"grpc.address {address!r} differs from CONTAINERD_SOCKET {want!r}")
        plugins = c.get("plugins") or {}
        runtime = plugins.get("io.containerd.cri.v1.runtime") or {}
        self.expect(runtime.get("enable_experimental_restore_via_create") is True, rel,
                    "enable_experimental_restore_via_create must be true: the walkthrough restores through CreateContainer")
        self.expect(runtime.get("enable_criu", True) is True, rel, "enable_criu must not be false")
        runc = ((runtime.get("containerd") or {}).get("runtimes") or {}).get("runc") or {}
        self.expect(runc.get("runtime_type") == "io.containerd.runc.v2", rel, "runc runtime_type must be io.containerd.runc.v2")
        opts = runc.get("options") or {}
        systemd_cgroup = opts.get("SystemdCgroup")
        self.expect(isinstance(systemd_cgroup, bool), rel, "runc options.SystemdCgroup must be set (true or false)")
        driver = kubeadm.get("cgroupDriver")
        self.expect((driver == "systemd") == (systemd_cgroup is True), "config/kubeadm.yaml",
                    f"cgroupDriver {driver!r} does not match containerd's SystemdCgroup = {systemd_cgroup}")
        binary = opts.get("BinaryName", "")
        self.expect(binary == "" or binary.startswith("/"), rel, f"BinaryName {binary!r} is not absolute")
        cni = runtime.get("cni") or {}
        self.expect("/usr/lib/cni" in (cni.get("bin_dirs") or []), rel,
                    "cni.bin_dirs must include /usr/lib/cni (Debian's containernetworking-plugins)")
        self.expect(cni.get("conf_dir", "/etc/cni/net.d") == "/etc/cni/net.d", rel, "cni.conf_dir must be /etc/cni/net.d")
        registry = ((plugins.get("io.containerd.cri.v1.images") or {}).get("registry") or {})
        self.expect(registry.get("config_path") == "/etc/containerd/certs.d", rel,
                    "images registry.config_path must be /etc/containerd/certs.d (hosts.toml for the local registry)")
        transfer = plugins.get("io.containerd.transfer.v1.local") or {}
        self.expect(transfer.get("config_path") == registry.get("config_path"), rel,
                    "the transfer service's config_path must match the CRI registry config_path (it performs the pulls)")

        hrel = "config/containerd/hosts-localhost-5000.toml"
        h = self.toml(hrel)
        reg = self.versions.get("REGISTRY", "?")
        self.expect(h.get("server") == f"http://{reg}", hrel, f"server must be http://{reg}")
        host = (h.get("host") or {}).get(f"http://{reg}") or {}
        caps = set(host.get("capabilities") or [])
        self.expect({"pull", "resolve"} <= caps, hrel, f"host http://{reg} needs the pull and resolve capabilities")
        self.expect(hrel.endswith(reg.replace(":", "-") + ".toml"), hrel, f"file name does not name registry {reg}")
        return {"address": address}

    def check_cni(self, kubeadm: dict) -> None:
        rel = "config/cni/10-cpengine-bridge.conflist"
        t = self.text(rel)
        if t is None:
            return
        try:
            c = json.loads(t)
        except json.JSONDecodeError as e:
            self.expect(False, rel, f"JSON does not parse: {e}")
            return
        self.expect(c.get("cniVersion") in ("0.4.0", "1.0.0"), rel,
                    "cniVersion must be one Debian's plugins (1.1.1) support: 0.4.0 or 1.0.0")
        plugins = c.get("plugins") or []
        types = [p.get("type") for p in plugins]
        self.expect(types[:1] == ["bridge"], rel, "the first plugin must be the bridge")
        known = {"bridge", "portmap", "bandwidth", "firewall", "tuning"}
        self.expect(set(types) <= known, rel, f"unknown plugin types {sorted(set(types) - known)}")
        subnets = []
        for p in plugins:
            for r in ((p.get("ipam") or {}).get("ranges") or []):
                subnets += [x.get("subnet") for x in r]
        self.expect(subnets == [kubeadm.get("podSubnet")], rel,
                    f"bridge IPAM ranges {subnets} differ from kubeadm's podSubnet {kubeadm.get('podSubnet')!r}")

    def check_registry(self) -> None:
        rel = "config/registry.yml"
        docs = self.yaml_docs(rel)
        if not docs:
            return
        r = docs[0]
        self.expect(str(r.get("version")) == "0.1", rel, "version must be 0.1 (distribution's configuration format)")
        addr = str((r.get("http") or {}).get("addr", ""))
        host, _, port = addr.rpartition(":")
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = host == "localhost"
        self.expect(loopback, rel, f"http.addr {addr!r} must be a loopback address: the registry has no authentication")
        reg_port = self.versions.get("REGISTRY", ":").rpartition(":")[2]
        self.expect(port == reg_port, rel, f"http.addr port {port!r} differs from REGISTRY's {reg_port!r}")
        self.expect("auth" not in r, rel, "an auth section would make pushes and pulls need credentials")
        root = (((r.get("storage") or {}).get("filesystem")) or {}).get("rootdirectory", "")
        self.expect(str(root).startswith("/"), rel, "storage.filesystem.rootdirectory must be an absolute path")

    def check_crictl(self) -> None:
        rel = "config/crictl.yaml"
        docs = self.yaml_docs(rel)
        if not docs:
            return
        c = docs[0]
        for key in ("runtime-endpoint", "image-endpoint"):
            self.expect(c.get(key) == self.versions.get("CPENGINE_CRI_SOCKET"), rel, f"{key} must be the shim's socket")

    def check_manifests(self) -> None:
        walk = self.files.get("walkthrough.sh", "")
        names = dict(re.findall(r"^(POD|CTR|RESTORED|NS)=(\S+)$", walk, re.M))
        expected = {
            "manifests/counter.yaml": (names.get("POD"), self.versions.get("WORKLOAD_IMAGE")),
            "manifests/counter-restored.yaml": (names.get("RESTORED"), self.versions.get("CHECKPOINT_IMAGE")),
        }
        for rel, (name, image) in expected.items():
            docs = self.yaml_docs(rel)
            self.expect(len(docs) == 1, rel, "expected exactly one document")
            if not docs:
                continue
            d = docs[0]
            self.expect(d.get("apiVersion") == "v1" and d.get("kind") == "Pod", rel, "expected apiVersion v1, kind Pod")
            meta = d.get("metadata") or {}
            self.expect(meta.get("name") == name, rel, f"metadata.name {meta.get('name')!r} differs from walkthrough.sh's {name!r}")
            self.expect(meta.get("namespace", "default") == names.get("NS"), rel, "namespace differs from walkthrough.sh's NS")
            ctrs = (d.get("spec") or {}).get("containers") or []
            if not self.expect(len(ctrs) == 1, rel, "expected exactly one container"):
                continue
            c = ctrs[0]
            self.expect(c.get("name") == names.get("CTR"), rel,
                        f"container name {c.get('name')!r} differs from walkthrough.sh's CTR {names.get('CTR')!r}")
            self.expect(c.get("image") == image, rel, f"image {c.get('image')!r} differs from config/versions.env ({image})")
            self.expect(c.get("imagePullPolicy") in ("Always", "IfNotPresent"), rel, "imagePullPolicy must be set")
            ports = [p.get("containerPort") for p in c.get("ports") or []]
            self.expect(8080 in ports, rel, "the workload serves its state on 8080")
            probe = ((c.get("readinessProbe") or {}).get("httpGet") or {})
            self.expect(probe.get("path") == "/state" and probe.get("port") == 8080, rel,
                        "readinessProbe must GET /state on 8080 (the walkthrough waits for Ready)")
        restored = (self.yaml_docs("manifests/counter-restored.yaml") or [{}])[0]
        rc = ((restored.get("spec") or {}).get("containers") or [{}])[0]
        self.expect(rc.get("imagePullPolicy") == "Always", "manifests/counter-restored.yaml",
                    "the checkpoint image is re-pushed under the same tag: imagePullPolicy must be Always")

    # -- systemd ------------------------------------------------------------------------------
    def parse_unit(self, rel: str) -> dict[str, list[tuple[str, str]]]:
        t = self.text(rel)
        sections: dict[str, list[tuple[str, str]]] = {}
        if t is None:
            return sections
        current = None
        lines = t.splitlines()
        i = 0
        while i < len(lines):
            n, line = i + 1, lines[i].rstrip()
            i += 1
            while line.endswith("\\") and i < len(lines):
                line = line[:-1] + " " + lines[i].strip()
                i += 1
            s = line.strip()
            if not s or s[0] in "#;":
                continue
            m = re.fullmatch(r"\[([A-Za-z]+)\]", s)
            if m:
                current = m.group(1)
                self.expect(current in UNIT_DIRECTIVES, f"{rel}:{n}", f"unknown section [{current}]")
                self.expect(current not in sections, f"{rel}:{n}", f"section [{current}] appears twice")
                sections.setdefault(current, [])
                continue
            m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)", s)
            if not self.expect(m is not None, f"{rel}:{n}", f"not a Key=Value line: {s!r}"):
                continue
            if not self.expect(current is not None, f"{rel}:{n}", "directive before any section"):
                continue
            key, value = m.group(1), m.group(2)
            self.expect(key in UNIT_DIRECTIVES.get(current, set()), f"{rel}:{n}",
                        f"unknown directive {key}= in [{current}]")
            sections[current].append((key, value))
        return sections

    @staticmethod
    def values(sections: dict, section: str, key: str) -> list[str]:
        return [v for k, v in sections.get(section, []) if k == key]

    def words(self, sections: dict, section: str, key: str) -> set[str]:
        return {w for v in self.values(sections, section, key) for w in v.split()}

    def exec_start(self, rel: str, sections: dict, dropin: bool) -> list[str]:
        """The effective ExecStart command line of a unit or drop-in, as argv."""
        starts = self.values(sections, "Service", "ExecStart")
        if dropin and any(s.strip() for s in starts):
            self.expect(starts[0].strip() == "", rel,
                        "a drop-in that sets ExecStart= must reset it first with an empty ExecStart=")
        effective = [s for s in starts if s.strip()]
        if not self.expect(len(effective) == 1, rel, f"expected exactly one ExecStart command, found {len(effective)}"):
            return []
        argv = effective[0].lstrip("-@:+!").split()
        self.expect(bool(argv) and argv[0].startswith("/"), rel, f"ExecStart program {argv[:1]} is not an absolute path")
        return argv

    def check_units(self, containerd: dict) -> None:
        base = "config/systemd/"
        units = {
            "containerd.service": self.parse_unit(base + "containerd.service"),
            "cpengine-shim.service": self.parse_unit(base + "cpengine-shim.service"),
            "kubelet.service": self.parse_unit(base + "kubelet.service"),
        }
        kubeadm_dropin = self.parse_unit(base + "kubelet.service.d/10-kubeadm.conf")
        registry_dropin = self.parse_unit(base + "docker-registry.service.d/10-cpengine-playground.conf")

        for name, s in units.items():
            rel = base + name
            self.expect(bool(self.values(s, "Unit", "Description")), rel, "no Description=")
            self.expect(bool(self.words(s, "Install", "WantedBy")), rel, "no WantedBy= in [Install]: it would not start at boot")
            types = self.values(s, "Service", "Type") or ["simple"]
            self.expect(types[-1] in SERVICE_TYPES, rel, f"Type={types[-1]} is not a service type")
            clash = self.words(s, "Unit", "After") & self.words(s, "Unit", "Before")
            self.expect(not clash, rel, f"ordered both after and before {sorted(clash)}")

        ctrd = units["containerd.service"]
        argv = self.exec_start(base + "containerd.service", ctrd, dropin=False)
        self.expect(argv[:1] == ["/usr/local/bin/containerd"], base + "containerd.service", "must start /usr/local/bin/containerd")
        config_arg = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
        self.expect(config_arg == "/etc/containerd/config.toml", base + "containerd.service",
                    "must pass --config /etc/containerd/config.toml")
        self.expect(self.values(ctrd, "Service", "Delegate") == ["yes"], base + "containerd.service", "needs Delegate=yes")
        self.expect(self.values(ctrd, "Service", "KillMode") == ["process"], base + "containerd.service",
                    "needs KillMode=process (containers must survive a containerd restart)")

        shim = units["cpengine-shim.service"]
        rel = base + "cpengine-shim.service"
        argv = self.exec_start(rel, shim, dropin=False)
        self.expect(argv[:1] == [SHIM_BINARY], rel, f"must start {SHIM_BINARY}")
        upstream = argv[argv.index("--upstream") + 1] if "--upstream" in argv[:-1] else None
        self.expect(upstream == "unix://" + str(containerd.get("address")), rel,
                    f"--upstream {upstream!r} is not containerd's grpc.address unix://{containerd.get('address')}")
        self.expect("containerd.service" in self.words(shim, "Unit", "After"), rel, "must be ordered After=containerd.service")
        self.expect("containerd.service" in (self.words(shim, "Unit", "Requires") | self.words(shim, "Unit", "BindsTo")),
                    rel, "must Requires= (or BindsTo=) containerd.service: it is nothing without its upstream")
        self.expect("kubelet.service" in self.words(shim, "Unit", "Before"), rel, "must be ordered Before=kubelet.service")
        rundir = self.values(shim, "Service", "RuntimeDirectory")
        self.expect(rundir == [self.versions.get("CPENGINE_CRI_SOCKET", "").removeprefix("unix:///run/").rpartition("/")[0]],
                    rel, "RuntimeDirectory= must create the directory of the shim's socket under /run")

        kubelet = units["kubelet.service"]
        rel = base + "kubelet.service"
        argv = self.exec_start(rel, kubelet, dropin=False)
        self.expect(argv[:1] == ["/usr/local/bin/kubelet"], rel, "must start /usr/local/bin/kubelet")
        self.expect("cpengine-shim.service" in self.words(kubelet, "Unit", "After"), rel,
                    "must be ordered After=cpengine-shim.service (its CRI endpoint)")
        rel = base + "kubelet.service.d/10-kubeadm.conf"
        argv = self.exec_start(rel, kubeadm_dropin, dropin=True)
        self.expect(argv[:1] == ["/usr/local/bin/kubelet"], rel, "must start /usr/local/bin/kubelet")
        for var in ("$KUBELET_KUBECONFIG_ARGS", "$KUBELET_CONFIG_ARGS", "$KUBELET_KUBEADM_ARGS", "$KUBELET_EXTRA_ARGS"):
            self.expect(var in argv, rel, f"ExecStart does not pass {var}")
        envfiles = {v.lstrip("-") for v in self.values(kubeadm_dropin, "Service", "EnvironmentFile")}
        self.expect("/var/lib/kubelet/kubeadm-flags.env" in envfiles, rel, "must read /var/lib/kubelet/kubeadm-flags.env")

        rel = base + "docker-registry.service.d/10-cpengine-playground.conf"
        argv = self.exec_start(rel, registry_dropin, dropin=True)
        self.expect(argv[:2] == ["/usr/bin/docker-registry", "serve"] and argv[2:] == ["/etc/cpengine-playground/registry.yml"],
                    rel, "must run /usr/bin/docker-registry serve /etc/cpengine-playground/registry.yml")

        # The boot order the playground needs: containerd, then the shim, then the kubelet.
        order = set()
        for name, s in units.items():
            order |= {(a, name) for a in self.words(s, "Unit", "After")}
            order |= {(name, b) for b in self.words(s, "Unit", "Before")}
        for a, b in (("containerd.service", "cpengine-shim.service"), ("cpengine-shim.service", "kubelet.service")):
            self.expect((a, b) in order and (b, a) not in order, base, f"{a} must start before {b}, and not the other way round")

        # CRIU lives in /usr/local/sbin: whatever runs runc or CRIU must look there first.
        for name in ("containerd.service", "cpengine-shim.service"):
            env = " ".join(self.values(units[name], "Service", "Environment"))
            m = re.search(r"PATH=(\S+)", env)
            path = m.group(1).split(":") if m else []
            ok = "/usr/local/sbin" in path and ("/usr/sbin" not in path or path.index("/usr/local/sbin") < path.index("/usr/sbin"))
            self.expect(ok, base + name, "Environment=PATH must put /usr/local/sbin (CRIU 4.x) before /usr/sbin")

        if self.run_systemd_analyze:
            self.systemd_analyze()

    def systemd_analyze(self) -> None:
        """`systemd-analyze verify` over the units in a scratch root with stub programs."""
        exe = shutil.which("systemd-analyze")
        system_units = Path("/usr/lib/systemd/system")
        with tempfile.TemporaryDirectory(prefix="cpengine-units.") as tmp:
            root = Path(tmp)
            shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
            etc = root / "etc/systemd/system"
            for rel, content in self.files.items():
                if rel.startswith("config/systemd/"):
                    dest = etc / rel.removeprefix("config/systemd/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_text(content)
            if not (root / "usr/lib/systemd/system/docker-registry.service").exists():
                # Stand-in for the unit Debian's docker-registry package ships, so that the drop-in
                # can be verified on a machine without the package.
                (root / "usr/lib/systemd/system/docker-registry.service").write_text(
                    "[Unit]\nDescription=registry stand-in\n[Service]\nExecStart=/usr/bin/docker-registry\n"
                    "[Install]\nWantedBy=multi-user.target\n")
            programs = set()
            for f in etc.rglob("*"):
                if f.is_file():
                    for m in re.finditer(r"^Exec\w+=[-@:+!]*(/\S+)", f.read_text(), re.M):
                        programs.add(m.group(1))
            for m in re.finditer(r"^Exec\w+=[-@:+!]*(/\S+)",
                                 (root / "usr/lib/systemd/system/docker-registry.service").read_text(), re.M):
                programs.add(m.group(1))
            for prog in programs:
                stub = root / prog.lstrip("/")
                if stub.is_symlink() or stub.exists():
                    continue
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\nexit 0\n")
                stub.chmod(0o755)
            names = ["containerd.service", "cpengine-shim.service", "kubelet.service", "docker-registry.service"]
            proc = subprocess.run([exe, "verify", f"--root={root}", "--man=no", *names],
                                  capture_output=True, text=True, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
            out = (proc.stdout + proc.stderr).strip().replace(str(root), "")
            self.expect(proc.returncode == 0 and not out, "config/systemd",
                        f"systemd-analyze verify (exit {proc.returncode}) reported:\n{out}")

    # -- scripts ------------------------------------------------------------------------------
    def check_scripts(self) -> None:
        provision = sorted(p for p in self.files if re.fullmatch(r"provision/\d\d-[a-z0-9-]+\.sh", p))
        self.expect(bool(provision), "provision", "no provisioning steps")
        for rel in provision + ["walkthrough.sh", "check.sh"]:
            t = self.files.get(rel, "")
            self.expect(t.startswith("#!/usr/bin/env bash\n"), rel, "must start with #!/usr/bin/env bash")
            self.expect(re.search(r"^set -E?euo pipefail$", t, re.M) is not None, rel, "must set -euo pipefail")
        for rel in provision:
            self.expect('. "$(dirname "$0")/lib.sh"' in self.files[rel], rel, "must source lib.sh")
        # Every configuration file is installed by some step (no orphans, no typos in paths).
        scripts = "\n".join(self.files[p] for p in provision)
        for rel in sorted(p for p in self.files if p.startswith("config/") and p != "config/versions.env"):
            self.expect(f'$CONFIG/{rel.removeprefix("config/")}' in scripts, rel,
                        "no provisioning step installs this file ($CONFIG/... path not found)")
        # No package-mirror host of this machine's apt configuration in any file.
        for host in apt_hosts():
            for rel, t in self.files.items():
                self.expect(host not in t, rel, "names a package mirror host from the apt configuration")


def apt_hosts() -> set[str]:
    hosts = set()
    paths = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        hosts |= set(re.findall(r"[a-z][a-z0-9+.-]*://(?:[^@/\s]*@)?([^/:\s\]]+)", text))
    return {h for h in hosts if "." in h}


def load_files() -> dict[str, str]:
    files = {}
    for p in sorted(PLAYGROUND.rglob("*")):
        rel = p.relative_to(PLAYGROUND).as_posix()
        if not p.is_file() or rel.startswith((".vagrant/", "bin/")) or "__pycache__" in rel:
            continue
        try:
            files[rel] = p.read_text()
        except UnicodeDecodeError:
            continue
    return files


# (file, text to replace, replacement, a word the error must contain)
MUTATIONS = [
    ("config/kubeadm.yaml", "criSocket: unix:///run/cpengine/cri.sock",
     "criSocket: unix:///run/containerd/containerd.sock", "criSocket"),
    ("config/kubeadm.yaml", "ContainerCheckpoint: true", "ContainerCheckpoint: false", "ContainerCheckpoint"),
    ("config/kubeadm.yaml", "ContainerCheckpoint: true", 'ContainerCheckpoint: "true"', "ContainerCheckpoint"),
    ("config/kubeadm.yaml", "cgroupDriver: systemd", "cgroupDriver: cgroupfs", "SystemdCgroup"),
    ("config/kubeadm.yaml", "kind: KubeletConfiguration", "kind: KubeletConfig", "KubeletConfig"),
    ("config/kubeadm.yaml", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration",
     "apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration", "apiVersion"),
    ("config/kubeadm.yaml", "kubernetesVersion: v1.35.8", "kubernetesVersion: v1.29.0", "kubernetesVersion"),
    ("config/kubeadm.yaml", "  podSubnet: 10.244.0.0/16", "  podSubnet: 10.85.0.0/16", "podSubnet"),
    ("config/kubeadm.yaml", "taints: []", "taints: null", "taints"),
    ("config/kubeadm.yaml", "featureGates:\n", "featureGates: [\n", "YAML does not parse"),
    ("config/versions.env", "KUBERNETES_VERSION=1.35.8", "KUBERNETES_VERSION=1.29.4", ">= 1.30"),
    ("config/versions.env", "CONTAINERD_VERSION=2.3.4", "CONTAINERD_VERSION=2.4.0", "2.4"),
    ("config/versions.env", "CONTAINERD_SHA256=9d68", "CONTAINERD_SHA256=zz68", "CONTAINERD_SHA256"),
    ("config/containerd/config.toml", "enable_experimental_restore_via_create = true",
     "enable_experimental_restore_via_create = false", "enable_experimental_restore_via_create"),
    ("config/containerd/config.toml", "SystemdCgroup = true", "SystemdCgroup = false", "SystemdCgroup"),
    ("config/containerd/config.toml", 'address = "/run/containerd/containerd.sock"',
     'address = "/run/containerd/other.sock"', "grpc.address"),
    ("config/containerd/config.toml", 'config_path = "/etc/containerd/certs.d"\n\n[plugins.\'io.containerd.cri.v1.runtime\']',
     'config_path = "/etc/containerd/hosts"\n\n[plugins.\'io.containerd.cri.v1.runtime\']', "transfer"),
    ("config/containerd/config.toml", 'bin_dirs = ["/usr/lib/cni"]', 'bin_dirs = ["/opt/cni/bin"]', "bin_dirs"),
    ("config/containerd/hosts-localhost-5000.toml", 'server = "http://localhost:5000"',
     'server = "https://localhost:5000"', "server"),
    ("config/cni/10-cpengine-bridge.conflist", '"subnet": "10.244.0.0/16"', '"subnet": "10.88.0.0/16"', "podSubnet"),
    ("config/registry.yml", "addr: 127.0.0.1:5000", "addr: :5000", "loopback"),
    ("config/crictl.yaml", "runtime-endpoint: unix:///run/cpengine/cri.sock",
     "runtime-endpoint: unix:///run/containerd/containerd.sock", "runtime-endpoint"),
    ("manifests/counter.yaml", "image: localhost:5000/cpengine-playground/counter:1",
     "image: busybox:latest", "image"),
    ("manifests/counter-restored.yaml", "imagePullPolicy: Always", "imagePullPolicy: IfNotPresent", "Always"),
    ("manifests/counter-restored.yaml", "    - name: counter\n", "    - name: webserver\n", "container name"),
    ("config/systemd/cpengine-shim.service", "Before=kubelet.service\n", "", "Before=kubelet.service"),
    ("config/systemd/cpengine-shim.service", "After=containerd.service\n", "After=kubelet.service\n", "After=containerd"),
    ("config/systemd/cpengine-shim.service", "ExecStart=/usr/local/bin/cpengine-shim",
     "ExecStart=cpengine-shim", "absolute"),
    ("config/systemd/cpengine-shim.service", "--upstream unix:///run/containerd/containerd.sock",
     "--upstream unix:///run/crio/crio.sock", "--upstream"),
    ("config/systemd/cpengine-shim.service", "Requires=containerd.service", "Requirez=containerd.service", "Requirez"),
    ("config/systemd/cpengine-shim.service", "[Install]", "[Instal]", "Instal"),
    ("config/systemd/kubelet.service", "After=network-online.target cpengine-shim.service",
     "After=network-online.target", "cpengine-shim.service"),
    ("config/systemd/kubelet.service.d/10-kubeadm.conf", "ExecStart=\nExecStart=/usr/local/bin/kubelet",
     "ExecStart=/usr/local/bin/kubelet", "reset"),
    ("config/systemd/containerd.service", "Delegate=yes", "Delegate=no", "Delegate"),
    ("config/systemd/containerd.service", "Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin",
     "Environment=PATH=/usr/sbin:/usr/local/sbin:/usr/local/bin", "PATH"),
    ("provision/20-containerd.sh", "set -euo pipefail", "set -eu", "pipefail"),
    ("provision/20-containerd.sh", '"$CONFIG/containerd/config.toml"', '"$CONFIG/containerd/config.tml"', "installs"),
]


def self_test(files: dict[str, str], analyze: bool) -> int:
    failures = 0
    # The structural checks must catch these on their own; systemd-analyze (about a second per
    # run) is exercised once, on a breakage only systemd itself knows about.
    mutations = [(*m, False) for m in MUTATIONS]
    if analyze:
        mutations.append(("config/systemd/containerd.service", "RestartSec=5", "RestartSec=five",
                          "systemd-analyze", True))
    for rel, old, new, word, with_analyze in mutations:
        if old not in files.get(rel, ""):
            print(f"self-test: {rel} no longer contains {old!r}: update the mutation", file=sys.stderr)
            failures += 1
            continue
        broken = dict(files)
        broken[rel] = files[rel].replace(old, new, 1)
        errors = Checks(broken, with_analyze).run()
        if not any(word in e for e in errors):
            failures += 1
            print(f"self-test: breaking {rel} ({old!r} -> {new!r}) was not reported"
                  f" (expected an error mentioning {word!r}; got {errors})", file=sys.stderr)
    print(f"self-test: {len(mutations) - failures} of {len(mutations)} deliberate breakages detected")
    return failures


def main() -> int:
    args = sys.argv[1:]
    files = load_files()
    analyze = shutil.which("systemd-analyze") is not None and Path("/usr/lib/systemd/system").is_dir()
    if "--no-systemd-analyze" in args:
        analyze = False
    checks = Checks(files, analyze)
    errors = checks.run()
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    how = "systemd-analyze verify + structural check" if analyze else \
        "structural check only (systemd-analyze not available here)"
    print(f"config: {checks.count - len(errors)} of {checks.count} checks passed; systemd units: {how}")
    failures = len(errors)
    if "--self-test" in args:
        failures += self_test(files, analyze)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
