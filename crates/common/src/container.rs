//! Containers and pods, found from the node without asking any daemon.
//!
//! A tracer runs where the daemons may not answer (a crashed dockerd, a node
//! where the CRI socket is not mounted into the tool's own pod, a runtime we
//! have no client for), and a daemon's answer would not say more than the
//! kernel and the runtimes' files already do: every container runtime names
//! the cgroup of a container after its 64-hex id, Kubernetes names the pod's
//! cgroup after its uid and QoS class, and each runtime keeps the names and
//! the CRI annotations in plain files. So the ids come from `/proc/*/cgroup`,
//! the cgroup directories from the cgroup2 mount (wherever it is), and names
//! from the runtimes' on-disk state, read through `/proc/1/root` so that the
//! tool also works from a `--pid=host` container that only mounts `/sys`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

/// The runtime a container belongs to, from its cgroup name or its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
    /// A container started with runc directly (its state in /run/runc).
    Runc,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Runc => "runc",
        }
    }
}

/// Kubernetes QoS class, from the kubepods cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path says about the container and pod it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// 64 lowercase hex digits.
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// A Kubernetes pod uid (with dashes) or a podman pod id.
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
    /// The path (as given, `/..` prefix stripped) of the pod's cgroup.
    pub pod_path: Option<String>,
    /// The path of the container's own cgroup (it may have children).
    pub container_path: Option<String>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A pod uid: a UUID, or for static pods the 32-hex hash of their manifest.
fn is_pod_uid(s: &str) -> bool {
    (s.len() == 36 || s.len() == 32) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Strip the `/..` components a cgroup path starts with when it is read from
/// inside a cgroup namespace that does not contain it.
pub fn strip_dotdot(path: &str) -> &str {
    let mut p = path;
    while let Some(rest) = p.strip_prefix("/..") {
        if rest.is_empty() || rest.starts_with('/') {
            p = rest;
        } else {
            break;
        }
    }
    p
}

/// Parse a cgroup v2 path (the part after `0::` in /proc/PID/cgroup).
///
/// Formats (cgroupfs driver, then systemd driver):
/// docker `/docker/ID`, `/system.slice/docker-ID.scope`; podman
/// `/libpod_parent/libpod-ID`, `/libpod_parent/PODID/libpod-ID`,
/// `/machine.slice/libpod-ID.scope`, `machine-libpod_pod_PODID.slice`;
/// containerd `/NAMESPACE/ID`, `cri-containerd-ID.scope`; CRI-O `crio-ID`,
/// `crio-ID.scope`; kubelet `/kubepods[/burstable|/besteffort]/podUID/ID`,
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podU_I_D.slice/...`.
/// The conmon monitors (`libpod-conmon-ID`, `crio-conmon-ID`) are not the
/// container. Nested containers (docker in docker) give the innermost id.
pub fn parse_cgroup_path(path: &str) -> CgroupInfo {
    let path = strip_dotdot(path);
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut info = CgroupInfo::default();
    let mut kubepods = false;
    let prefix = |i: usize| format!("/{}", comps[..=i].join("/"));
    for (i, &c) in comps.iter().enumerate() {
        let base = c.strip_suffix(".scope").or_else(|| c.strip_suffix(".slice")).unwrap_or(c);
        match base {
            "kubepods" => {
                kubepods = true;
                continue;
            }
            "burstable" | "kubepods-burstable" if kubepods => {
                info.qos = Some(Qos::Burstable);
                continue;
            }
            "besteffort" | "kubepods-besteffort" if kubepods => {
                info.qos = Some(Qos::BestEffort);
                continue;
            }
            _ => {}
        }
        if kubepods && info.container_id.is_none() {
            // cgroupfs: podUID; systemd: kubepods[-QOS]-podU_I_D.slice
            let uid = base
                .strip_prefix("pod")
                .or_else(|| base.rsplit_once("-pod").map(|(_, u)| u))
                .map(|u| u.replace('_', "-"));
            if let Some(uid) = uid.filter(|u| is_pod_uid(u)) {
                info.pod_uid = Some(uid);
                info.pod_path = Some(prefix(i));
                info.qos.get_or_insert(Qos::Guaranteed);
                continue;
            }
        }
        if let Some(pod) = base.strip_prefix("machine-libpod_pod_").filter(|p| is_hex64(p)) {
            info.pod_uid = Some(pod.to_string());
            info.pod_path = Some(prefix(i));
            continue;
        }
        if base.contains("conmon-") {
            // A runtime's monitor process, next to the container.
            continue;
        }
        let (id, runtime) = if let Some(id) = base.strip_prefix("docker-") {
            (id, Some(Runtime::Docker))
        } else if let Some(id) = base.strip_prefix("libpod-") {
            (id, Some(Runtime::Podman))
        } else if let Some(id) = base.strip_prefix("cri-containerd-") {
            (id, Some(Runtime::Containerd))
        } else if let Some(id) = base.strip_prefix("crio-") {
            (id, Some(Runtime::CriO))
        } else {
            let parent = i.checked_sub(1).map(|p| comps[p]);
            let rt = match parent {
                Some("docker") => Some(Runtime::Docker),
                _ => None,
            };
            (base, rt)
        };
        if !is_hex64(id) {
            continue;
        }
        // podman's cgroupfs pods: /libpod_parent/PODID/libpod-ID.
        if runtime.is_none() && i >= 1 && comps[i - 1] == "libpod_parent" {
            info.pod_uid = Some(id.to_string());
            info.pod_path = Some(prefix(i));
            continue;
        }
        info.container_id = Some(id.to_string());
        info.runtime = runtime;
        info.container_path = Some(prefix(i));
    }
    if info.container_id.is_none() && info.pod_uid.is_none() {
        info.qos = None;
    }
    info
}

/// The cgroup v2 path of a process (the `0::` line of /proc/PID/cgroup).
pub fn process_cgroup(pid: u32) -> Option<String> {
    let data = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup_v2_line(&data).map(str::to_string)
}

fn cgroup_v2_line(data: &str) -> Option<&str> {
    data.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Where cgroup v2 is mounted: its mount point and the hierarchy path at its
/// root (not `/` when mounted from inside a cgroup namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub dir: PathBuf,
    pub root: String,
}

/// Find the cgroup2 mount: /sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones, or anywhere else mountinfo says.
pub fn cgroup2_mount() -> Result<Cgroup2Mount> {
    let data = fs::read_to_string("/proc/self/mountinfo")?;
    let mounts = parse_cgroup2_mounts(&data);
    let pick = mounts
        .iter()
        .find(|m| m.dir == Path::new("/sys/fs/cgroup"))
        .or_else(|| mounts.iter().find(|m| m.dir == Path::new("/sys/fs/cgroup/unified")))
        .or_else(|| mounts.first());
    match pick {
        Some(m) => Ok(m.clone()),
        None => bail!("no cgroup2 filesystem is mounted (searched /proc/self/mountinfo)"),
    }
}

fn parse_cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        if post.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        out.push(Cgroup2Mount { dir: PathBuf::from(unescape_mount(f[4])), root: f[3].to_string() });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroup2Mount {
    /// The directory of a cgroup path as /proc/PID/cgroup shows it. Paths
    /// outside our cgroup namespace (`/..`) are found by their tail.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let stripped = strip_dotdot(path).trim_start_matches('/');
        let rel = if path.starts_with("/..") {
            stripped.to_string()
        } else {
            // Relative to the mount's root.
            let root = self.root.trim_start_matches('/');
            if root.is_empty() {
                stripped.to_string()
            } else {
                stripped.strip_prefix(root).unwrap_or(stripped).trim_start_matches('/').to_string()
            }
        };
        let direct = self.dir.join(&rel);
        if direct.is_dir() {
            return Some(direct);
        }
        // Another namespace's view: find the directory whose path ends with
        // the given one (its last component holds a unique id).
        let last = rel.rsplit('/').next().filter(|l| !l.is_empty())?;
        find_dir(&self.dir, last, &rel, 8)
    }

    /// The level of a cgroup directory below the hierarchy's root (the root
    /// is 0), as `bpf_get_current_ancestor_cgroup_id` counts.
    pub fn level_of(&self, dir: &Path) -> Option<u32> {
        let rel = dir.strip_prefix(&self.dir).ok()?;
        let root = self.root.split('/').filter(|c| !c.is_empty() && *c != "..").count();
        Some((root + rel.components().count()) as u32)
    }
}

fn find_dir(base: &Path, last: &str, tail: &str, depth: u32) -> Option<PathBuf> {
    let entries = fs::read_dir(base).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        if e.file_name().to_str() == Some(last) && p.to_string_lossy().ends_with(tail) {
            return Some(p);
        }
        subdirs.push(p);
    }
    if depth == 0 {
        return None;
    }
    subdirs.into_iter().find_map(|d| find_dir(&d, last, tail, depth - 1))
}

/// A Kubernetes pod (or a podman pod: no namespace, its id as uid).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

/// A running container as found on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: Option<String>,
    pub runtime: Option<Runtime>,
    pub pod: Option<PodInfo>,
    /// Its cgroup path (as /proc/PID/cgroup shows it).
    pub cgroup: String,
    /// The cgroup path of its pod, if in one.
    pub pod_cgroup: Option<String>,
    /// Its processes when it was found.
    pub pids: Vec<u32>,
}

impl ContainerInfo {
    /// `{"id","name","runtime"}` for the JSON lines.
    pub fn container_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime.map(Runtime::as_str),
        })
    }

    /// `{"namespace","name","uid"}`, when in a pod.
    pub fn pod_json(&self) -> Option<Value> {
        self.pod.as_ref().map(|p| json!({"namespace": p.namespace, "name": p.name, "uid": p.uid}))
    }

    /// Add `container` (and `pod`) fields to a JSON object.
    pub fn enrich(&self, obj: &mut serde_json::Map<String, Value>) {
        obj.insert("container".into(), self.container_json());
        if let Some(p) = self.pod_json() {
            obj.insert("pod".into(), p);
        }
    }
}

/// What the runtimes' own files say about a container.
#[derive(Debug, Clone, Default)]
struct Meta {
    name: Option<String>,
    runtime: Option<Runtime>,
    pod: PodInfo,
}

/// Reader of the runtimes' on-disk state, under a root (the host's, seen
/// through /proc/1/root, or a test's directory).
#[derive(Debug, Clone)]
pub struct MetaStore {
    root: PathBuf,
    podman: Option<HashMap<String, (String, String)>>,
}

/// Where each runtime keeps its state, as searched (for error messages).
pub const META_PLACES: &str = "podman (/var/lib/containers/storage, and users' \
     ~/.local/share/containers/storage), docker \
     (/var/lib/docker/containers), containerd (/run/containerd/io.containerd.runtime.v2.task), \
     CRI-O (/run/containers/storage), runc (/run/runc)";

impl MetaStore {
    /// The host's files: through a host process's root when it is another
    /// root than ours (a tool in a container with the host's PID namespace;
    /// see [`host_root_pid`]).
    pub fn host() -> Self {
        let root = host_root_pid().map_or_else(|| PathBuf::from("/"), proc_root);
        Self::at(root)
    }

    pub fn at(root: PathBuf) -> Self {
        MetaStore { root, podman: None }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read_json(&self, p: &str) -> Option<Value> {
        let data = fs::read(self.path(p)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// podman's (and CRI-O's) storage directories: root's, and each
    /// user's for rootless podman.
    fn podman_stores(&self) -> Vec<String> {
        let mut stores = vec![
            "var/lib/containers/storage".to_string(),
            "run/containers/storage".to_string(),
            "root/.local/share/containers/storage".to_string(),
        ];
        if let Ok(homes) = fs::read_dir(self.path("home")) {
            for h in homes.flatten() {
                if let Some(user) = h.file_name().to_str() {
                    stores.push(format!("home/{user}/.local/share/containers/storage"));
                }
            }
        }
        stores
    }

    /// Container id -> (name, storage directory), from each store's
    /// containers.json.
    fn podman_names(&mut self) -> &HashMap<String, (String, String)> {
        if self.podman.is_none() {
            let mut map = HashMap::new();
            for store in self.podman_stores() {
                let file = format!("{store}/overlay-containers/containers.json");
                let Some(Value::Array(list)) = self.read_json(&file) else { continue };
                for c in list {
                    let id = c.get("id").and_then(Value::as_str);
                    let name = c.pointer("/names/0").and_then(Value::as_str);
                    if let (Some(id), Some(name)) = (id, name) {
                        map.insert(id.to_string(), (name.to_string(), store.clone()));
                    }
                }
            }
            self.podman = Some(map);
        }
        self.podman.get_or_insert_with(HashMap::new)
    }

    /// Names, runtime and pod of container `id`, from whichever runtime
    /// knows it.
    fn lookup(&mut self, id: &str) -> Meta {
        let mut m = Meta::default();
        if let Some((name, own_store)) = self.podman_names().get(id).cloned() {
            m.name = Some(name);
            m.runtime = Some(Runtime::Podman);
            // CRI-O keeps its containers' config under /run.
            for store in [own_store.as_str(), "run/containers/storage"] {
                let cfg = format!("{store}/overlay-containers/{id}/userdata/config.json");
                if let Some(spec) = self.read_json(&cfg) {
                    let ann = annotations(&spec);
                    if ann.contains_key("io.kubernetes.pod.name") {
                        m.runtime = Some(Runtime::CriO);
                    }
                    apply_annotations(&mut m, &ann);
                    break;
                }
            }
            return m;
        }
        if let Some(cfg) = self.read_json(&format!("var/lib/docker/containers/{id}/config.v2.json"))
        {
            m.runtime = Some(Runtime::Docker);
            m.name = cfg
                .get("Name")
                .and_then(Value::as_str)
                .map(|n| n.trim_start_matches('/').to_string());
            if let Some(Value::Object(labels)) = cfg.pointer("/Config/Labels") {
                let ann = labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                apply_annotations(&mut m, &ann);
            }
            return m;
        }
        let tasks = self.path("run/containerd/io.containerd.runtime.v2.task");
        if let Ok(namespaces) = fs::read_dir(&tasks) {
            for ns in namespaces.flatten() {
                let cfg = ns.path().join(id).join("config.json");
                let Some(spec) = fs::read(&cfg).ok().and_then(|d| serde_json::from_slice(&d).ok())
                else {
                    continue;
                };
                m.runtime = Some(Runtime::Containerd);
                m.name = Some(id.to_string());
                apply_annotations(&mut m, &annotations(&spec));
                return m;
            }
        }
        if let Some(state) = self.read_json(&format!("run/runc/{id}/state.json")) {
            m.runtime = Some(Runtime::Runc);
            m.name = Some(id.to_string());
            let mut ann = BTreeMap::new();
            if let Some(Value::Array(labels)) = state.pointer("/config/labels") {
                for l in labels.iter().filter_map(Value::as_str) {
                    if let Some((k, v)) = l.split_once('=') {
                        ann.insert(k.to_string(), v.to_string());
                    }
                }
            }
            apply_annotations(&mut m, &ann);
        }
        m
    }

    /// A podman pod's name, from libpod's database (a bolt file whose
    /// values are JSON: the pod's config starts `{"id":"PODID","name":`).
    fn podman_pod_name(&self, pod_id: &str) -> Option<String> {
        let needle = format!("{{\"id\":\"{pod_id}\",\"name\":\"");
        self.podman_stores().iter().find_map(|store| {
            let db = fs::read(self.path(&format!("{store}/libpod/bolt_state.db"))).ok()?;
            let at = find_bytes(&db, needle.as_bytes())? + needle.len();
            let end = db[at..].iter().position(|&b| b == b'"')?;
            String::from_utf8(db[at..at + end].to_vec()).ok()
        })
    }
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn annotations(spec: &Value) -> BTreeMap<String, String> {
    match spec.get("annotations") {
        Some(Value::Object(a)) => {
            a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
        }
        _ => BTreeMap::new(),
    }
}

/// The pod and container names CRI runtimes (and dockershim) record.
fn apply_annotations(m: &mut Meta, ann: &BTreeMap<String, String>) {
    let get = |keys: &[&str]| keys.iter().find_map(|k| ann.get(*k).cloned());
    if let Some(n) = get(&["io.kubernetes.container.name", "io.kubernetes.cri.container-name"]) {
        m.name = Some(n);
    }
    let pod_name = get(&["io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name"]);
    let pod_ns = get(&["io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace"]);
    let pod_uid = get(&["io.kubernetes.pod.uid", "io.kubernetes.cri.sandbox-uid"]);
    if pod_name.is_some() || pod_uid.is_some() {
        m.pod = PodInfo { namespace: pod_ns, name: pod_name, uid: pod_uid };
    }
}

/// Every running container on the node, by scanning /proc/*/cgroup.
pub fn scan(store: &mut MetaStore) -> Vec<ContainerInfo> {
    let mut by_id: BTreeMap<String, (CgroupInfo, String, Vec<u32>)> = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(path) = process_cgroup(pid) else { continue };
        let info = parse_cgroup_path(&path);
        let Some(id) = info.container_id.clone() else { continue };
        let entry = by_id.entry(id).or_insert_with(|| (info, path, Vec::new()));
        entry.2.push(pid);
    }
    by_id.into_iter().map(|(id, (info, path, pids))| build(store, id, &info, &path, pids)).collect()
}

fn build(
    store: &mut MetaStore,
    id: String,
    info: &CgroupInfo,
    path: &str,
    pids: Vec<u32>,
) -> ContainerInfo {
    let meta = store.lookup(&id);
    let mut pod = meta.pod.clone();
    if pod.uid.is_none() {
        pod.uid = info.pod_uid.clone();
    }
    let runtime = meta.runtime.or(info.runtime);
    if pod.name.is_none() && runtime == Some(Runtime::Podman) {
        if let Some(pod_id) = &info.pod_uid {
            pod.name = store.podman_pod_name(pod_id);
        }
    }
    let in_pod = pod.uid.is_some() || pod.name.is_some();
    ContainerInfo {
        id,
        name: meta.name,
        runtime,
        pod: in_pod.then_some(pod),
        cgroup: info.container_path.clone().unwrap_or_else(|| strip_dotdot(path).to_string()),
        pod_cgroup: info.pod_path.clone(),
        pids,
    }
}

/// What `--container`, `--pod` or `--pod-uid` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Container(String),
    Pod { namespace: Option<String>, name: String },
    PodUid(String),
}

impl Selector {
    pub fn pod(spec: &str) -> Self {
        match spec.split_once('/') {
            Some((ns, name)) => Selector::Pod { namespace: Some(ns.into()), name: name.into() },
            None => Selector::Pod { namespace: None, name: spec.into() },
        }
    }
}

/// A selector resolved to one cgroup subtree.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The cgroup path to filter on (its whole subtree).
    pub cgroup: String,
    /// The containers in it (one for --container; a pod's for --pod).
    pub containers: Vec<ContainerInfo>,
}

impl Resolved {
    /// Processes in the subtree when it was resolved.
    pub fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.containers.iter().flat_map(|c| c.pids.iter().copied()).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

fn describe(c: &ContainerInfo) -> String {
    let mut s = c.id[..12].to_string();
    if let Some(n) = &c.name {
        s.push_str(&format!(" ({n})"));
    }
    if let Some(p) = &c.pod {
        let ns = p.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
        s.push_str(&format!(
            " pod {ns}{} uid {}",
            p.name.as_deref().unwrap_or("?"),
            p.uid.as_deref().unwrap_or("?")
        ));
    }
    s
}

fn list(cs: &[&ContainerInfo]) -> String {
    if cs.is_empty() {
        return "none".into();
    }
    cs.iter().map(|c| describe(c)).collect::<Vec<_>>().join(", ")
}

/// Resolve a selector against the running containers.
pub fn resolve(sel: &Selector, all: &[ContainerInfo]) -> Result<Resolved> {
    let searched = format!("searched /proc/*/cgroup and the runtimes' files: {META_PLACES}");
    match sel {
        Selector::Container(want) => {
            let want_l = want.to_ascii_lowercase();
            let exact: Vec<&ContainerInfo> = all
                .iter()
                .filter(|c| c.id == want_l || c.name.as_deref() == Some(want.as_str()))
                .collect();
            let matches = if exact.is_empty() && want_l.bytes().all(|b| b.is_ascii_hexdigit()) {
                all.iter().filter(|c| c.id.starts_with(&want_l)).collect()
            } else {
                exact
            };
            match matches.as_slice() {
                [one] => {
                    Ok(Resolved { cgroup: one.cgroup.clone(), containers: vec![(*one).clone()] })
                }
                [] => bail!(
                    "no running container is named {want} or has an id starting with it \
                     ({searched}); running: {}",
                    list(&all.iter().collect::<Vec<_>>())
                ),
                many => bail!(
                    "container {want} is ambiguous: it matches {}; give more of the id",
                    list(many)
                ),
            }
        }
        Selector::Pod { namespace, name } => {
            let matches: Vec<&ContainerInfo> = all
                .iter()
                .filter(|c| {
                    c.pod.as_ref().is_some_and(|p| {
                        p.name.as_deref() == Some(name.as_str())
                            && (namespace.is_none() || p.namespace == *namespace)
                    })
                })
                .collect();
            let pods: Vec<(Option<String>, Option<String>)> = {
                let mut v: Vec<_> = matches
                    .iter()
                    .map(|c| {
                        (c.pod.as_ref().and_then(|p| p.namespace.clone()), c.pod_cgroup.clone())
                    })
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let shown = namespace.as_ref().map(|n| format!("{n}/{name}")).unwrap_or(name.clone());
            if matches.is_empty() {
                let in_pods: Vec<&ContainerInfo> = all.iter().filter(|c| c.pod.is_some()).collect();
                bail!(
                    "no running pod is named {shown} ({searched}); containers in pods: {}",
                    list(&in_pods)
                );
            }
            if pods.len() > 1 {
                bail!(
                    "pod {shown} is ambiguous: it matches {}; give NAMESPACE/NAME or --pod-uid",
                    list(&matches)
                );
            }
            pod_resolved(&shown, matches)
        }
        Selector::PodUid(uid) => {
            let uid_l = uid.to_ascii_lowercase();
            let matches: Vec<&ContainerInfo> = all
                .iter()
                .filter(|c| c.pod.as_ref().and_then(|p| p.uid.as_deref()) == Some(uid_l.as_str()))
                .collect();
            if matches.is_empty() {
                let in_pods: Vec<&ContainerInfo> = all.iter().filter(|c| c.pod.is_some()).collect();
                bail!(
                    "no running pod has uid {uid} ({searched}, kubepods cgroup paths); \
                     containers in pods: {}",
                    list(&in_pods)
                );
            }
            pod_resolved(uid, matches)
        }
    }
}

fn pod_resolved(shown: &str, matches: Vec<&ContainerInfo>) -> Result<Resolved> {
    // The pod's own cgroup when its path names it; otherwise the one
    // directory that holds all its containers.
    let cgroup = match matches[0].pod_cgroup.clone() {
        Some(p) => p,
        None => {
            let paths: Vec<&str> = matches.iter().map(|c| c.cgroup.as_str()).collect();
            let common = common_dir(&paths);
            if matches.len() < 2 || common == "/" {
                bail!(
                    "pod {shown}: its cgroup cannot be told from its containers' ({}); \
                     use --container",
                    paths.join(", ")
                );
            }
            common
        }
    };
    Ok(Resolved { cgroup, containers: matches.into_iter().cloned().collect() })
}

fn common_dir(paths: &[&str]) -> String {
    let split: Vec<Vec<&str>> =
        paths.iter().map(|p| p.split('/').filter(|c| !c.is_empty()).collect()).collect();
    let mut n = 0;
    while split.iter().all(|s| s.len() > n && s[n] == split[0][n]) {
        n += 1;
    }
    format!("/{}", split[0][..n].join("/"))
}

/// Container (and pod) of a process, if it runs in one.
pub fn of_process(store: &mut MetaStore, pid: u32) -> Option<ContainerInfo> {
    let path = process_cgroup(pid)?;
    let info = parse_cgroup_path(&path);
    let id = info.container_id.clone()?;
    Some(build(store, id, &info, &path, vec![pid]))
}

/// Container of each cgroup id the kernel reports with events, for the
/// system-wide tools. Events only look the id up in a map; an id not seen
/// before refreshes the map from the cgroup2 tree, at most every
/// [`RESCAN_EVERY`], so a stream of events costs no system call each. An
/// id still unknown after a rescan (a cgroup created since) is looked for
/// again at the next one.
pub struct CgroupCache {
    mount: Option<Cgroup2Mount>,
    store: MetaStore,
    map: HashMap<u64, Option<ContainerInfo>>,
    last_scan: Option<Instant>,
}

/// The least time between two scans of the cgroup tree.
pub const RESCAN_EVERY: Duration = Duration::from_millis(200);

impl CgroupCache {
    pub fn new() -> Self {
        CgroupCache {
            mount: cgroup2_mount().ok(),
            store: MetaStore::host(),
            map: HashMap::new(),
            last_scan: None,
        }
    }

    /// The container of cgroup `id`, if any.
    pub fn get(&mut self, id: u64) -> Option<&ContainerInfo> {
        if !self.map.contains_key(&id) && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.rescan();
        }
        self.map.get(&id).and_then(Option::as_ref)
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(mount) = self.mount.clone() else { return };
        // Names may have appeared since (a container being created).
        self.store.podman = None;
        let mut found = Vec::new();
        walk(&mount.dir, 0, &mut |dir, ino| {
            let rel = dir.strip_prefix(&mount.dir).ok()?;
            let path = format!("/{}", rel.to_string_lossy());
            let info = parse_cgroup_path(&path);
            found.push((ino, info, path));
            Some(())
        });
        for (ino, info, path) in found {
            if self.map.get(&ino).is_some_and(Option::is_some) {
                continue;
            }
            let c = info
                .container_id
                .clone()
                .map(|id| build(&mut self.store, id, &info, &path, Vec::new()));
            self.map.insert(ino, c);
        }
    }
}

impl Default for CgroupCache {
    fn default() -> Self {
        Self::new()
    }
}

fn walk(dir: &Path, depth: u32, f: &mut dyn FnMut(&Path, u64) -> Option<()>) {
    let Ok(md) = fs::metadata(dir) else { return };
    f(dir, md.ino());
    if depth >= 12 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), depth + 1, f);
        }
    }
}

/// The container of each process seen, read once per process (the
/// report and stack lines of a run over a container or pod).
pub struct PidContainers {
    store: MetaStore,
    map: HashMap<u32, Option<ContainerInfo>>,
}

impl PidContainers {
    pub fn new() -> Self {
        PidContainers { store: MetaStore::host(), map: HashMap::new() }
    }

    /// Read `pid`'s container now, while it is alive.
    pub fn prime(&mut self, pid: u32) {
        if !self.map.contains_key(&pid) {
            let c = of_process(&mut self.store, pid);
            self.map.insert(pid, c);
        }
    }

    pub fn get(&mut self, pid: u32) -> Option<&ContainerInfo> {
        self.prime(pid);
        self.map.get(&pid).and_then(Option::as_ref)
    }
}

impl Default for PidContainers {
    fn default() -> Self {
        Self::new()
    }
}

/// A cgroup directory to trace with its whole subtree.
#[derive(Debug, Clone)]
pub struct CgroupTarget {
    pub dir: PathBuf,
    /// Its id (the directory's inode), as BPF sees it.
    pub id: u64,
    /// Its depth below the hierarchy's root, for the ancestor match.
    pub level: u32,
}

impl CgroupTarget {
    /// A cgroup v2 directory given by path (`--cgroup`), on whichever
    /// cgroup2 mount holds it.
    pub fn of_dir(path: &Path) -> Result<Self> {
        let id = crate::cli::cgroup_id(path)?;
        let dir = fs::canonicalize(path)?;
        let data = fs::read_to_string("/proc/self/mountinfo")?;
        let mount = parse_cgroup2_mounts(&data)
            .into_iter()
            .filter(|m| dir.starts_with(&m.dir))
            .max_by_key(|m| m.dir.components().count());
        let Some(level) = mount.and_then(|m| m.level_of(&dir)) else {
            bail!("cgroup {}: not under a cgroup2 mount point", path.display());
        };
        Ok(CgroupTarget { dir, id, level })
    }

    /// Every process in the subtree now.
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        walk(&self.dir, 0, &mut |d, _| {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            Some(())
        });
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A selector resolved on this node: the containers and the cgroup
/// subtree that holds them.
#[derive(Debug, Clone)]
pub struct Selected {
    pub selector: Selector,
    pub cgroup: CgroupTarget,
    pub resolved: Resolved,
}

/// Resolve `--container`, `--pod` or `--pod-uid`.
pub fn select(sel: &Selector) -> Result<Selected> {
    let mut store = MetaStore::host();
    let all = scan(&mut store);
    let resolved = resolve(sel, &all)?;
    let mount = cgroup2_mount()?;
    if let Some(dir) = mount.dir_of(&resolved.cgroup) {
        let cgroup = CgroupTarget::of_dir(&dir)?;
        return Ok(Selected { selector: sel.clone(), cgroup, resolved });
    }
    // In a container of its own (the leakd image run with --pid=host and
    // the host's /sys), our /sys/fs/cgroup may be the runtime's mount of
    // our own cgroup namespace, which does not hold the target: the host's
    // hierarchy is still reachable through PID 1's root.
    let mut searched = vec![mount.dir.display().to_string()];
    for host in host_cgroup2_mounts() {
        if let Some(dir) = host.dir_of(&resolved.cgroup) {
            let id = crate::cli::cgroup_id(&dir)?;
            let Some(level) = host.level_of(&dir) else { continue };
            let cgroup = CgroupTarget { dir, id, level };
            return Ok(Selected { selector: sel.clone(), cgroup, resolved });
        }
        searched.push(host.dir.display().to_string());
    }
    bail!(
        "cgroup {} of {} not found under {}",
        resolved.cgroup,
        describe(&resolved.containers[0]),
        searched.join(" or ")
    );
}

/// A process whose root is the host's, when ours is not: PID 1 (systemd on
/// a node), else the first ancestor of ours with another root than ours
/// (the runtime's shim, conmon or containerd-shim, when we run in a
/// container sharing the host's PIDs). None when we are on the host, or
/// cannot read another root.
pub fn host_root_pid() -> Option<u32> {
    let key = |p: &Path| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let ours = key(Path::new("/"))?;
    let mut candidates = vec![1];
    let mut pid = std::process::id();
    for _ in 0..8 {
        match crate::procmaps::status_field(&pid.to_string(), "PPid")
            .and_then(|v| v.parse::<u32>().ok())
        {
            Some(pp) if pp > 1 => {
                candidates.push(pp);
                pid = pp;
            }
            _ => break,
        }
    }
    candidates.into_iter().find(|&p| {
        let root = proc_root(p);
        key(&root).is_some_and(|k| k != ours) && fs::read_dir(&root).is_ok()
    })
}

fn proc_root(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// The host's cgroup2 mounts, seen through a host process's root (see
/// [`host_root_pid`]); the usual mount points first.
fn host_cgroup2_mounts() -> Vec<Cgroup2Mount> {
    let Some(pid) = host_root_pid() else { return Vec::new() };
    let Ok(data) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return Vec::new();
    };
    let root = proc_root(pid);
    let mut mounts: Vec<Cgroup2Mount> = parse_cgroup2_mounts(&data)
        .into_iter()
        .filter(|m| m.root == "/")
        .map(|m| Cgroup2Mount {
            dir: root.join(m.dir.strip_prefix("/").unwrap_or(&m.dir)),
            root: m.root,
        })
        .collect();
    let usual = |m: &Cgroup2Mount| {
        !(m.dir.ends_with("sys/fs/cgroup") || m.dir.ends_with("sys/fs/cgroup/unified"))
    };
    mounts.sort_by_key(usual);
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "35f6b09128b15b253c2622ad96591da79ec079dd0ffdfe2ece581ff0f25424e2";
    const B: &str = "dd7a8e45d0679cdd594f5a6cca39e750d9e53a46d04854030c7790b98ab79b68";
    const UID: &str = "0f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";
    const UID_: &str = "0f1c2d3e_4b5a_6978_8a9b_0c1d2e3f4a5b";

    fn info(
        id: Option<&str>,
        rt: Option<Runtime>,
        uid: Option<&str>,
        qos: Option<Qos>,
    ) -> (Option<String>, Option<Runtime>, Option<String>, Option<Qos>) {
        (id.map(String::from), rt, uid.map(String::from), qos)
    }

    /// Real cgroup v2 paths of each runtime, driver and QoS class.
    #[test]
    fn cgroup_path_formats() {
        use Qos::*;
        use Runtime::*;
        let table: Vec<(String, _)> = vec![
            // docker, cgroupfs and systemd drivers; docker in docker.
            (format!("/docker/{A}"), info(Some(A), Some(Docker), None, None)),
            (format!("/system.slice/docker-{A}.scope"), info(Some(A), Some(Docker), None, None)),
            (format!("/docker/{B}/docker/{A}"), info(Some(A), Some(Docker), None, None)),
            // podman: alone, in a pod, systemd driver, rootless, conmon.
            (format!("/libpod_parent/libpod-{A}"), info(Some(A), Some(Podman), None, None)),
            (
                format!("/libpod_parent/{B}/libpod-{A}"),
                info(Some(A), Some(Podman), Some(B), None),
            ),
            (format!("/machine.slice/libpod-{A}.scope"), info(Some(A), Some(Podman), None, None)),
            (
                format!("/machine.slice/machine-libpod_pod_{B}.slice/libpod-{A}.scope"),
                info(Some(A), Some(Podman), Some(B), None),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{A}.scope"
                ),
                info(Some(A), Some(Podman), None, None),
            ),
            (format!("/machine.slice/libpod-conmon-{A}.scope"), info(None, None, None, None)),
            ("/libpod_parent/conmon".to_string(), info(None, None, None, None)),
            // containerd (ctr): /NAMESPACE/ID.
            (format!("/default/{A}"), info(Some(A), None, None, None)),
            (format!("/k8s.io/{A}"), info(Some(A), None, None, None)),
            // kubelet cgroupfs driver: all QoS classes.
            (format!("/kubepods/pod{UID}/{A}"), info(Some(A), None, Some(UID), Some(Guaranteed))),
            (
                format!("/kubepods/burstable/pod{UID}/{A}"),
                info(Some(A), None, Some(UID), Some(Burstable)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{A}"),
                info(Some(A), None, Some(UID), Some(BestEffort)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{A}"),
                info(Some(A), Some(CriO), Some(UID), Some(BestEffort)),
            ),
            // kubelet systemd driver: containerd, CRI-O, docker; all QoS.
            (
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{A}.scope"
                ),
                info(Some(A), Some(Containerd), Some(UID), Some(Guaranteed)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{A}.scope"
                ),
                info(Some(A), Some(CriO), Some(UID), Some(Burstable)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{A}.scope"
                ),
                info(Some(A), Some(Docker), Some(UID), Some(BestEffort)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{A}.scope"
                ),
                info(None, None, Some(UID), Some(Burstable)),
            ),
            // A pod's own cgroup, no container; a static pod's hash uid.
            (format!("/kubepods/burstable/pod{UID}"), info(None, None, Some(UID), Some(Burstable))),
            (
                "/kubepods/pod0123456789abcdef0123456789abcdef".to_string(),
                info(None, None, Some("0123456789abcdef0123456789abcdef"), Some(Guaranteed)),
            ),
            // Read from inside another cgroup namespace.
            (
                format!("/../../kubepods/burstable/pod{UID}/{A}"),
                info(Some(A), None, Some(UID), Some(Burstable)),
            ),
            (format!("/../docker-{A}.scope"), info(Some(A), Some(Docker), None, None)),
            // Not containers.
            ("/".to_string(), info(None, None, None, None)),
            ("/..".to_string(), info(None, None, None, None)),
            ("/user.slice/user-0.slice/session-1.scope".to_string(), info(None, None, None, None)),
            ("/system.slice/containerd.service".to_string(), info(None, None, None, None)),
            (format!("/docker/{}", &A[..63]), info(None, None, None, None)),
        ];
        for (path, want) in table {
            let got = parse_cgroup_path(&path);
            assert_eq!((got.container_id, got.runtime, got.pod_uid, got.qos), want, "{path}");
        }
    }

    #[test]
    fn pod_and_container_paths() {
        let p = format!("/../kubepods/burstable/pod{UID}/{A}");
        let i = parse_cgroup_path(&p);
        assert_eq!(i.pod_path.as_deref(), Some(format!("/kubepods/burstable/pod{UID}").as_str()));
        assert_eq!(
            i.container_path.as_deref(),
            Some(format!("/kubepods/burstable/pod{UID}/{A}").as_str())
        );
        let p = format!("/libpod_parent/{B}/libpod-{A}");
        let i = parse_cgroup_path(&p);
        assert_eq!(i.pod_path.as_deref(), Some(format!("/libpod_parent/{B}").as_str()));
        assert_eq!(strip_dotdot("/../.."), "");
        assert_eq!(strip_dotdot("/..foo"), "/..foo");
    }

    #[test]
    fn cgroup2_mounts_from_mountinfo() {
        let mi = "35 25 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                  44 35 0:39 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                  50 40 0:39 /kubepods/x /host\\040dir rw - cgroup2 cgroup2 rw\n";
        let m = parse_cgroup2_mounts(mi);
        assert_eq!(
            m,
            vec![
                Cgroup2Mount { dir: "/sys/fs/cgroup/unified".into(), root: "/".into() },
                Cgroup2Mount { dir: "/host dir".into(), root: "/kubepods/x".into() },
            ]
        );
        let nested = &m[1];
        assert_eq!(nested.level_of(Path::new("/host dir/a/b")), Some(4));
        assert_eq!(m[0].level_of(Path::new("/sys/fs/cgroup/unified")), Some(0));
        assert_eq!(m[0].level_of(Path::new("/sys/fs/cgroup/unified/docker/x")), Some(2));
    }

    /// Directories of cgroup paths as another cgroup namespace shows them
    /// (`/..`), and under a mount of a subtree (mountinfo root not `/`).
    #[test]
    fn cgroup_dirs_from_any_view() {
        let tmp = std::env::temp_dir().join(format!("leakd-cgdir-{}", std::process::id()));
        let leaf = tmp.join(format!("kubepods/burstable/pod{UID}/{A}"));
        fs::create_dir_all(&leaf).unwrap();
        let m = Cgroup2Mount { dir: tmp.clone(), root: "/".into() };
        let path = format!("/kubepods/burstable/pod{UID}/{A}");
        assert_eq!(m.dir_of(&path), Some(leaf.clone()));
        assert_eq!(m.dir_of(&format!("/../..{path}")), Some(leaf.clone()));
        // From a namespace rooted in another pod: the path below the
        // common ancestor.
        assert_eq!(m.dir_of(&format!("/../../burstable/pod{UID}/{A}")), Some(leaf.clone()));
        assert_eq!(m.dir_of("/nope/abc"), None);
        let sub = Cgroup2Mount { dir: tmp.join("kubepods"), root: "/kubepods".into() };
        assert_eq!(sub.dir_of(&path), Some(leaf.clone()));
        assert_eq!(sub.level_of(&leaf), Some(4));
        fs::remove_dir_all(&tmp).unwrap();
    }

    /// Each runtime's on-disk state, laid out as the runtime writes it,
    /// under a test root: names, runtime and pod annotations.
    #[test]
    fn runtime_metadata_files() {
        let root = std::env::temp_dir().join(format!("leakd-meta-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let put = |rel: &str, text: &str| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        let id = |c: char| c.to_string().repeat(64);
        let (pm, cr, dk, ds, cd, rc) = (id('1'), id('2'), id('3'), id('4'), id('5'), id('6'));
        let pod_id = id('7');
        put(
            "var/lib/containers/storage/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{pm}","names":["web"]}},{{"id":"{cr}","names":["k8s_app_shop"]}}]"#
            ),
        );
        put(
            &format!("var/lib/containers/storage/overlay-containers/{cr}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.container.name":"app",
               "io.kubernetes.pod.name":"shop","io.kubernetes.pod.namespace":"prod",
               "io.kubernetes.pod.uid":"u-crio"}}"#,
        );
        put(
            "var/lib/containers/storage/libpod/bolt_state.db",
            &format!("\0\0junk{{\"id\":\"{pod_id}\",\"name\":\"mypod\",\"x\":1}}\0"),
        );
        put(&format!("var/lib/docker/containers/{dk}/config.v2.json"), r#"{"Name":"/db"}"#);
        // Rootless podman: a user's own store.
        let rl = id('8');
        put(
            "home/alice/.local/share/containers/storage/overlay-containers/containers.json",
            &format!(r#"[{{"id":"{rl}","names":["mine"]}}]"#),
        );
        put(
            &format!("var/lib/docker/containers/{ds}/config.v2.json"),
            r#"{"Name":"/k8s_app_x","Config":{"Labels":{"io.kubernetes.container.name":"app",
               "io.kubernetes.pod.name":"legacy","io.kubernetes.pod.namespace":"old",
               "io.kubernetes.pod.uid":"u-dockershim"}}}"#,
        );
        put(
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{cd}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-name":"api",
               "io.kubernetes.cri.sandbox-name":"api-7d9","io.kubernetes.cri.sandbox-namespace":"default",
               "io.kubernetes.cri.sandbox-uid":"u-cri"}}"#,
        );
        put(
            &format!("run/runc/{rc}/state.json"),
            r#"{"config":{"labels":["bundle=/b","io.kubernetes.pod.name=bare"]}}"#,
        );
        let mut store = MetaStore::at(root.clone());
        let look = |store: &mut MetaStore, id: &str| {
            let m = store.lookup(id);
            (m.name, m.runtime, m.pod.namespace, m.pod.name, m.pod.uid)
        };
        let s = |x: &str| Some(x.to_string());
        use Runtime::*;
        assert_eq!(look(&mut store, &pm), (s("web"), Some(Podman), None, None, None));
        assert_eq!(
            look(&mut store, &cr),
            (s("app"), Some(CriO), s("prod"), s("shop"), s("u-crio"))
        );
        assert_eq!(look(&mut store, &dk), (s("db"), Some(Docker), None, None, None));
        assert_eq!(
            look(&mut store, &ds),
            (s("app"), Some(Docker), s("old"), s("legacy"), s("u-dockershim"))
        );
        assert_eq!(
            look(&mut store, &cd),
            (s("api"), Some(Containerd), s("default"), s("api-7d9"), s("u-cri"))
        );
        assert_eq!(look(&mut store, &rc), (s(&rc), Some(Runc), None, s("bare"), None));
        assert_eq!(look(&mut store, &rl), (s("mine"), Some(Podman), None, None, None));
        assert_eq!(look(&mut store, &id('9')), (None, None, None, None, None));
        assert_eq!(store.podman_pod_name(&pod_id), s("mypod"));
        // A podman container in a pod: its pod's name from libpod's db.
        let info = parse_cgroup_path(&format!("/libpod_parent/{pod_id}/libpod-{pm}"));
        let c = build(&mut store, pm.clone(), &info, "", vec![1]);
        assert_eq!(c.pod_json(), Some(json!({"namespace": null, "name": "mypod", "uid": pod_id})));
        fs::remove_dir_all(&root).unwrap();
    }

    fn c(id: &str, name: &str, pod: Option<(&str, &str, &str)>, cg: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: Some(name.into()),
            runtime: Some(Runtime::Containerd),
            pod: pod.map(|(ns, n, u)| PodInfo {
                namespace: Some(ns.into()),
                name: Some(n.into()),
                uid: Some(u.into()),
            }),
            cgroup: cg.into(),
            pod_cgroup: pod.map(|(_, _, u)| format!("/kubepods/pod{u}")),
            pids: vec![1],
        }
    }

    #[test]
    fn selectors_resolve_or_say_why_not() {
        let a2 = format!("{}{}", &A[..10], &B[10..]);
        let all = vec![
            c(A, "web", Some(("prod", "shop", UID)), &format!("/kubepods/pod{UID}/{A}")),
            c(&a2, "db", Some(("dev", "shop", "u2")), &format!("/kubepods/podu2/{a2}")),
            c(B, "other", None, &format!("/default/{B}")),
        ];
        let r = resolve(&Selector::Container("web".into()), &all).unwrap();
        assert_eq!(r.containers[0].id, A);
        let r = resolve(&Selector::Container(A[..14].to_uppercase()), &all).unwrap();
        assert_eq!(r.containers[0].id, A);
        assert_eq!(r.cgroup, format!("/kubepods/pod{UID}/{A}"));
        let e = resolve(&Selector::Container(A[..6].into()), &all).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("(web)") && e.contains("(db)"), "{e}");
        let e = resolve(&Selector::Container("nope".into()), &all).unwrap_err().to_string();
        assert!(e.contains("/proc/*/cgroup") && e.contains("(other)"), "{e}");
        let e = resolve(&Selector::pod("shop"), &all).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("NAMESPACE/NAME"), "{e}");
        let r = resolve(&Selector::pod("prod/shop"), &all).unwrap();
        assert_eq!(r.cgroup, format!("/kubepods/pod{UID}"));
        let r = resolve(&Selector::PodUid(UID.to_uppercase()), &all).unwrap();
        assert_eq!(r.containers.len(), 1);
        let e = resolve(&Selector::PodUid("x".into()), &all).unwrap_err().to_string();
        assert!(e.contains("prod/shop"), "{e}");
    }
}
