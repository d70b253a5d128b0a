//! What takes leakd to where programs run: scripts/install into a prefix
//! and back out, the image (scripts/image) run privileged against a leaker
//! in another container (by --container ID and by host PID) and on the
//! host, the Kubernetes manifests and kubectl-leakd's
//! --dry-run output checked by a real schema validator, and kubectl-leakd's
//! logic against a stand-in kubectl (tests/fixtures/k8s/kubectl) answering
//! in Kubernetes' own JSON: no cluster can run on these machines.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, json_lines, KillOnDrop, TempDir};

const TOOLS: [&str; 6] =
    ["execsnoop", "syscount", "allocsnoop", "leakd-attach", "symres", "leakd-report"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put the tools (and, by build.rs, the leakers).
fn bin_dir() -> PathBuf {
    support::bin("leakd-attach").parent().expect("target dir").to_path_buf()
}

/// Whether `what` is here; outside CI a test without it is skipped with a
/// note, in CI it fails (scripts/setup installs it there).
fn required(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if support::in_ci() {
        panic!("{what} is missing in CI (scripts/setup installs it), refusing to skip");
    }
    eprintln!("note: skipping test: {what} is missing (scripts/setup installs it)");
    false
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).output().is_ok_and(|o| o.status.success())
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

fn install(args: &[&str]) -> Output {
    Command::new(repo().join("scripts/install")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn install_then_uninstall_leaves_the_prefix_as_it_was() {
    let tmp = TempDir::new("install");
    let prefix = tmp.0.join("usr");
    // Something of someone else's already there: it stays.
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::fs::write(prefix.join("bin/other"), "not ours").unwrap();
    let before = tree(&tmp.0);
    let from = bin_dir();
    let p = prefix.to_str().unwrap();

    let out = install(&["--from", from.to_str().unwrap(), p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut put = BTreeSet::new();
    for t in TOOLS {
        let b = prefix.join("bin").join(t);
        assert_eq!(std::fs::read(&b).unwrap(), std::fs::read(from.join(t)).unwrap(), "{t}");
        put.insert(b.display().to_string());
        let page = prefix.join("share/man/man8").join(format!("{t}.8"));
        assert_eq!(
            std::fs::read(&page).unwrap(),
            std::fs::read(repo().join("man").join(format!("{t}.8"))).unwrap()
        );
        put.insert(page.display().to_string());
    }
    let out = Command::new(prefix.join("bin/leakd-attach")).arg("--version").output().unwrap();
    assert!(out.status.success());
    // The manifest lists exactly the files put, and the directories made.
    let manifest = std::fs::read_to_string(prefix.join("share/leakd/install-manifest")).unwrap();
    let files: BTreeSet<String> =
        manifest.lines().filter_map(|l| l.strip_prefix("f ")).map(String::from).collect();
    assert_eq!(files, put);
    let dirs: BTreeSet<String> =
        manifest.lines().filter_map(|l| l.strip_prefix("d ")).map(String::from).collect();
    let made: BTreeSet<String> = ["share", "share/leakd", "share/man", "share/man/man8"]
        .iter()
        .map(|d| prefix.join(d).display().to_string())
        .collect();
    assert_eq!(dirs, made);

    // man finds the page from PATH alone (man-db looks beside each PATH
    // directory), with no MANPATH.
    if Path::new("/usr/bin/man").exists() || runs("man", &["--version"]) {
        let path = format!("{}/bin:{}", p, std::env::var("PATH").unwrap_or_default());
        let out = Command::new("man")
            .args(["-w", "leakd-attach"])
            .env_remove("MANPATH")
            .env("PATH", path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            prefix.join("share/man/man8/leakd-attach.8").display().to_string(),
            "{}",
            stderr(&out)
        );
    }

    // A second install over the first is fine.
    let out = install(&["--from", from.to_str().unwrap(), p]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = install(&["--uninstall", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&tmp.0), before, "uninstall removes exactly what install put");
    let out = install(&["--uninstall", p]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no install manifest"), "{}", stderr(&out));
}

#[test]
fn install_refuses_to_overwrite_a_file_it_did_not_put() {
    let tmp = TempDir::new("install-foreign");
    let prefix = tmp.0.join("p");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::fs::write(prefix.join("bin/symres"), "someone else's symres").unwrap();
    let before = tree(&tmp.0);
    let out = install(&["--from", bin_dir().to_str().unwrap(), prefix.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bin/symres exists and was not installed by scripts/install"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree(&tmp.0), before, "nothing installed");
    assert_eq!(
        std::fs::read_to_string(prefix.join("bin/symres")).unwrap(),
        "someone else's symres"
    );
}

#[test]
fn install_that_fails_midway_is_recorded_and_undone() {
    let tmp = TempDir::new("install-midway");
    let prefix = tmp.0.join("p");
    let p = prefix.to_str().unwrap();
    let before = tree(&tmp.0);
    // A --from whose fifth tool (symres) is a directory: install copies
    // execsnoop..leakd-attach and their pages, then fails on it.
    let from = TempDir::new("install-midway-from");
    for t in TOOLS {
        if t == "symres" {
            std::fs::create_dir(from.0.join(t)).unwrap();
        } else {
            std::fs::copy(bin_dir().join(t), from.0.join(t)).unwrap();
        }
    }
    let out = install(&["--from", from.0.to_str().unwrap(), p]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(prefix.join("bin/leakd-attach").exists(), "failed after the first tools");
    assert!(!prefix.join("bin/symres").exists());

    // Uninstall removes what the failed install put.
    let out = install(&["--uninstall", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&tmp.0), before, "uninstall after a failed install");

    // Failed again, then rerun with good binaries: the files already
    // copied are its own, not refused; then uninstall leaves nothing.
    let out = install(&["--from", from.0.to_str().unwrap(), p]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = install(&["--from", bin_dir().to_str().unwrap(), p]);
    assert!(out.status.success(), "rerun after a failed install: {}", stderr(&out));
    assert_eq!(
        std::fs::read(prefix.join("bin/symres")).unwrap(),
        std::fs::read(bin_dir().join("symres")).unwrap()
    );
    let out = install(&["--uninstall", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&tmp.0), before, "uninstall after the rerun");
}

#[test]
fn uninstall_refuses_a_manifest_naming_other_files() {
    let tmp = TempDir::new("install-tampered");
    let prefix = tmp.0.join("p");
    let p = prefix.to_str().unwrap();
    let out = install(&["--from", bin_dir().to_str().unwrap(), p]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A victim outside the prefix, and one inside it that install never
    // puts, each named by a tampered manifest.
    let victim = tmp.0.join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let stray = prefix.join("bin/other");
    std::fs::write(&stray, "keep me too").unwrap();
    let manifest = prefix.join("share/leakd/install-manifest");
    let good = std::fs::read_to_string(&manifest).unwrap();
    for (bad, named) in [
        (format!("f {}\n", victim.display()), victim.display().to_string()),
        (format!("f {}\n", stray.display()), stray.display().to_string()),
        (format!("f {}/bin/../../victim\n", p), format!("{p}/bin/../../victim")),
        (format!("d {}\n", tmp.0.join("victim").display()), victim.display().to_string()),
    ] {
        std::fs::write(&manifest, format!("{good}{bad}")).unwrap();
        let before = tree(&tmp.0);
        let out = install(&["--uninstall", p]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out)
                .contains(&format!("names '{}', which scripts/install never installs", bad.trim())),
            "{named}: {}",
            stderr(&out)
        );
        assert_eq!(tree(&tmp.0), before, "nothing removed for {bad}");
        // A reinstall refuses the tampered manifest too.
        let out = install(&["--from", bin_dir().to_str().unwrap(), p]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(std::fs::read_to_string(&stray).unwrap(), "keep me too");
    // Nor does it follow PREFIX/bin replaced by another user's link to
    // another directory (giving the link away needs root).
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::write(&manifest, &good).unwrap();
        let elsewhere = tmp.0.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("symres"), "not ours").unwrap();
        std::fs::rename(prefix.join("bin"), tmp.0.join("bin-aside")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, prefix.join("bin")).unwrap();
        // Made by someone else than root (nobody).
        std::os::unix::fs::lchown(prefix.join("bin"), Some(65534), Some(65534)).unwrap();
        let out = install(&["--uninstall", p]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("bin is a symbolic link not made by root"),
            "{}",
            stderr(&out)
        );
        assert_eq!(std::fs::read_to_string(elsewhere.join("symres")).unwrap(), "not ours");
        std::fs::remove_file(prefix.join("bin")).unwrap();
        std::fs::rename(tmp.0.join("bin-aside"), prefix.join("bin")).unwrap();
    }
    // The untampered manifest still uninstalls.
    std::fs::write(&manifest, good).unwrap();
    let out = install(&["--uninstall", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&prefix), ["bin", "bin/other"].iter().map(|s| s.to_string()).collect());
}

// ---------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------

/// podman with this host's settings (runc, no rlimits, no pids limit: see
/// scripts/setup --containers), from a containers.conf of the test's own,
/// so the test does not depend on what /etc/containers holds.
struct Podman {
    conf: TempDir,
    /// Containers and images to remove when the test ends.
    containers: Vec<String>,
    images: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        let conf = TempDir::new("podman-conf");
        std::fs::write(
            conf.0.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\npids_limit = 0\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman { conf, containers: Vec::new(), images: Vec::new() }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.conf.0.join("containers.conf"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "podman {args:?}: {}", stderr(&out));
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.cmd().args(["rm", "-f", "-t", "0", c]).output();
        }
        // By tag, not forced, and never during another test's build: tests
        // building the same files can get the same image id, and a forced
        // removal of one tag takes the image from under the other's build.
        let _builds = IMAGE_BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        for i in &self.images {
            let _ = self.cmd().args(["rmi", i]).output();
        }
    }
}

/// How the README runs the image's tools: privileged (BPF, perf events,
/// other processes' memory), the host's PIDs, the host's /sys, and the
/// host's cgroup tree (podman mounts a cgroupfs of the container's own over
/// /sys/fs/cgroup, under the /sys volume).
const RUN_TOOLS: &[&str] =
    &["--privileged", "--pid=host", "-v", "/sys:/sys", "-v", "/sys/fs/cgroup:/sys/fs/cgroup"];

/// Issue 22's own command line: the host's /sys only. The tools then find
/// the host's cgroup tree through PID 1's root.
const RUN_TOOLS_SYS_ONLY: &[&str] = &["--privileged", "--pid=host", "-v", "/sys:/sys"];

/// Held while an image is built or removed (see `Podman`'s drop).
static IMAGE_BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The image as scripts/image builds it, from the test build's binaries,
/// under a tag of the test's own (`name`; removed at the end).
fn build_image(podman: &mut Podman, name: &str) -> String {
    let tag = format!("localhost/leakd-test-{name}-{}:latest", std::process::id());
    podman.images.push(tag.clone());
    let _builds = IMAGE_BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(repo().join("scripts/image"))
        .args(["--from", bin_dir().to_str().unwrap(), "--tag", &tag, "--engine", "podman"])
        .env("CONTAINERS_CONF", podman.conf.0.join("containers.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/image: {}", stderr(&out));
    tag
}

fn container_pid(podman: &Podman, name: &str) -> u32 {
    let out = podman.run(&["inspect", "-f", "{{.State.Pid}}", name]);
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a pid")
}

/// Wait until a container's output has a line containing `needle`.
fn wait_logs(podman: &Podman, name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = podman.run(&["logs", name]);
        let all = [out.stdout, out.stderr].concat();
        if String::from_utf8_lossy(&all).contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never printed {needle}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The leakd image, run as the README says (privileged, the host's PIDs,
/// the host's /sys), finds the leak of a leaker in another container, by
/// its host PID: exact counts and the leaking function named.
#[test]
fn image_finds_the_leak_in_another_container() {
    if !support::root_available("container") || !required("podman", runs("podman", &["--version"]))
    {
        return;
    }
    let mut podman = Podman::new();
    let image = build_image(&mut podman, "leak");
    let id = std::process::id();
    let leaker = format!("leakd-test-leaker-{id}");
    let tool = format!("leakd-test-tool-{id}");
    podman.containers.push(leaker.clone());
    podman.containers.push(tool.clone());

    // The image holds the tools and their man pages.
    let out =
        podman.run(&["run", "--rm", "--network", "none", &image, "leakd-attach", "--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("leakd-attach "));

    podman.run(&[
        "run",
        "-d",
        "--name",
        &leaker,
        "--network",
        "none",
        &image,
        "leaker",
        "ten-nine",
        "--wait-signal",
        "--linger",
        "2",
    ]);
    wait_logs(&podman, &leaker, "leaker_ready");
    let pid = container_pid(&podman, &leaker);
    let pid_s = pid.to_string();

    let mut child = podman
        .cmd()
        .args(["run", "--rm", "--name", &tool])
        .args(RUN_TOOLS)
        .args(["--network", "none", &image, "leakd-attach", "-v", "--symbolize", "-p", &pid_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let child = KillOnDrop(child);
    wait_attached(child, err, stdout, |child, log| {
        assert!(log.contains("attached"), "the tool in the image never attached: {log}");
        support::signal(pid, libc::SIGUSR1);
        let (code, out) = finish(child, Duration::from_secs(60));
        assert_eq!(code, Some(3), "leaks found => exit 3");
        let lines = json_lines(&out);
        let i = lines.iter().rposition(|v| v["type"] == "report").expect("a report");
        let r = &lines[i];
        assert_eq!(r["final"], true, "{r}");
        assert_eq!(r["pid"], pid);
        assert_eq!(r["outstanding_count"], 1, "{lines:?}");
        assert_eq!(r["outstanding_bytes"], 8);
        let stacks: Vec<&Value> = lines[i + 1..].iter().filter(|v| v["type"] == "stack").collect();
        assert_eq!(stacks.len(), 1, "{lines:?}");
        assert_eq!(stacks[0]["allocs"], 10);
        assert_eq!(stacks[0]["frees"], 9);
        let frame = &stacks[0]["stack"][0];
        assert_eq!(frame["module"], "/usr/bin/leaker", "{frame}");
        assert_eq!(frame["sym"], "leak_ten_nine_alloc", "{frame}");
    });
}

/// Read a tool's stderr (in the background) until it says it attached or
/// ends, then hand the child and that log to `then`.
fn wait_attached(
    child: KillOnDrop,
    mut err: BufReader<std::process::ChildStderr>,
    stdout: std::process::ChildStdout,
    then: impl FnOnce((KillOnDrop, std::process::ChildStdout), &str),
) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        let mut sent = false;
        let mut line = String::new();
        while err.read_line(&mut line).is_ok_and(|n| n > 0) {
            log.push_str(&line);
            if !sent && line.contains("attached") {
                let _ = tx.send(log.clone());
                sent = true;
            }
            line.clear();
        }
        if !sent {
            let _ = tx.send(log);
        }
    });
    let log = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
    then((child, stdout), &log);
}

/// Wait for a child to end (killed after `limit`), with all its stdout.
fn finish(
    (mut child, mut stdout): (KillOnDrop, std::process::ChildStdout),
    limit: Duration,
) -> (Option<i32>, Vec<u8>) {
    let pid = child.0.id();
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            support::signal(pid, libc::SIGKILL);
        }
    });
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).unwrap();
    let status = child.0.wait().unwrap();
    let _ = done.send(());
    (status.code(), out)
}

// ---------------------------------------------------------------------------
// Kubernetes: manifests and kubectl-leakd
// ---------------------------------------------------------------------------

fn validator_present() -> bool {
    required(
        "kubernetes-validate (python3 -m kubernetes_validate)",
        runs("python3", &["-m", "kubernetes_validate", "--version"]),
    )
}

/// kubernetes-validate --strict on `files`: its exit status and report.
fn validate(files: &[&Path]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
    (out.status.success(), text)
}

#[test]
fn manifests_pass_strict_schema_validation() {
    if !validator_present() {
        return;
    }
    let deploy = repo().join("deploy");
    let ds = deploy.join("leakd-daemonset.yaml");
    let demo = deploy.join("memleak-demo.yaml");
    let fixtures = repo().join("tests/fixtures/k8s");
    let pod = fixtures.join("pod.json");
    let (ok, report) = validate(&[&ds, &demo, &pod]);
    assert!(ok, "{report}");
    for r in [
        "namespace/leakd",
        "daemonset/leakd",
        "namespace/memleak-demo",
        "deployment/memory-leaker",
        "pod/memory-leaker-6d8f7b9c5d-x7kq2",
    ] {
        assert!(report.contains(&format!("passed for resource {r} ")), "{r}: {report}");
    }
    // The validator does refuse what is wrong: the DaemonSet with one field
    // misspelled.
    let tmp = TempDir::new("k8s-bad");
    let bad = tmp.0.join("bad.yaml");
    let text = std::fs::read_to_string(&ds).unwrap();
    assert!(text.contains("hostPID: true"));
    std::fs::write(&bad, text.replace("hostPID: true", "hostPid: true")).unwrap();
    let (ok, report) = validate(&[&bad]);
    assert!(!ok && report.contains("'hostPid' was unexpected"), "{report}");

    // The demo leaks as the seed's does: 1 MiB every 5 s up to 1000 MiB.
    let docs = yaml_docs(&demo);
    let d = docs.iter().find(|d| d["kind"] == "Deployment").expect("the demo's Deployment");
    assert_eq!(d["metadata"]["namespace"], "memleak-demo");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!([
            "leaker",
            "steady",
            "--size",
            "1048576",
            "--interval",
            "5",
            "--max",
            "1048576000"
        ])
    );
    // The DaemonSet is what kubectl-leakd --all-nodes looks for (namespace
    // leakd, label app.kubernetes.io/name=leakd, container leakd), and runs
    // as the tools need.
    let docs = yaml_docs(&ds);
    let ns = docs.iter().find(|d| d["kind"] == "Namespace").expect("the leakd namespace");
    assert_eq!(ns["metadata"]["name"], "leakd");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    let d = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("the DaemonSet");
    assert_eq!(d["metadata"]["namespace"], "leakd");
    let t = &d["spec"]["template"];
    assert_eq!(t["metadata"]["labels"]["app.kubernetes.io/name"], "leakd");
    assert_eq!(t["spec"]["hostPID"], true);
    let c = &t["spec"]["containers"][0];
    assert_eq!(c["name"], "leakd");
    assert_eq!(c["command"], serde_json::json!(["leakd-idle"]));
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_host_sys(c, &t["spec"]);
}

/// The node's /sys and cgroup tree, at their places.
fn assert_host_sys(container: &Value, spec: &Value) {
    let mounts: Vec<(&str, &str)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
        .collect();
    assert_eq!(mounts, [("sys", "/sys"), ("cgroup", "/sys/fs/cgroup")]);
    let volumes: Vec<(&str, &str)> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["hostPath"]["path"].as_str().unwrap()))
        .collect();
    assert_eq!(volumes, [("sys", "/sys"), ("cgroup", "/sys/fs/cgroup")]);
}

/// The documents of a YAML file, as JSON (PyYAML comes with
/// kubernetes-validate).
fn yaml_docs(file: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

const POD: &str = "memory-leaker-6d8f7b9c5d-x7kq2";
const LEAKER_ID: &str = "0e3a7f1b9c2d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";
const SIDECAR_ID: &str = "5f1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100ff";

/// kubectl-leakd with the stand-in kubectl first on PATH, its records in a
/// directory of the test's own.
struct Plugin {
    state: TempDir,
}

impl Plugin {
    fn new(tag: &str) -> Plugin {
        Plugin { state: TempDir::new(&format!("kubectl-{tag}")) }
    }

    fn cmd(&self, args: &[&str], tool_mode: &str) -> Command {
        let fake = repo().join("tests/fixtures/k8s");
        let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default());
        let mut c = Command::new(repo().join("deploy/kubectl-leakd"));
        c.args(args)
            .env("PATH", path)
            .env_remove("KUBECTL")
            .env_remove("LEAKD_IMAGE")
            .env("FAKE_KUBECTL_DIR", &self.state.0)
            .env("FAKE_KUBECTL_TOOL", tool_mode)
            .stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.cmd(args, "finish").output().unwrap()
    }

    /// The kubectl commands it was given, in order, as given.
    fn raw_log(&self) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(self.state.0.join("log.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().into()).collect()
            })
            .collect()
    }

    /// The kubectl commands, each tool's exec without the `leakd-idle
    /// --session TOKEN --` that starts it (the stand-in refuses a tool
    /// started without it).
    fn log(&self) -> Vec<Vec<String>> {
        self.raw_log()
            .into_iter()
            .map(|mut a| {
                if a.len() > 11 && a[0] == "exec" && a[7] == "leakd-idle" && a[8] == "--session" {
                    a.drain(7..11);
                }
                a
            })
            .collect()
    }

    fn created(&self) -> Value {
        let text =
            std::fs::read_to_string(self.state.0.join("created.json")).expect("a pod created");
        serde_json::from_str(&text).unwrap()
    }

    /// Wait until the stand-in's tool runs in `pod` (the file it writes).
    fn wait_file(&self, file: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.state.0.join(file).exists() {
            assert!(Instant::now() < deadline, "{file} never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The index of the first command starting with `prefix`.
fn position(log: &[Vec<String>], prefix: &[&str]) -> usize {
    log.iter()
        .position(|a| a.len() >= prefix.len() && a.iter().zip(prefix).all(|(x, y)| x == y))
        .unwrap_or_else(|| panic!("no command {prefix:?} in {log:?}"))
}

/// The tool pod as the plugin makes it: on the target's node, the node's
/// PIDs, privileged, /sys from the host, leakd-idle as its process.
fn assert_tool_pod(pod: &Value) {
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["namespace"], "leakd");
    let spec = &pod["spec"];
    assert_eq!(spec["nodeName"], "worker-2", "the target pod's node");
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["restartPolicy"], "Never");
    let c = &spec["containers"][0];
    assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["image"], "localhost/leakd:latest");
    assert_eq!(c["command"], serde_json::json!(["leakd-idle"]));
    assert_host_sys(c, spec);
}

#[test]
fn plugin_dry_run_prints_a_valid_pod_for_the_targets_node() {
    let plugin = Plugin::new("dry");
    let out = plugin.output(&["-n", "memleak-demo", POD, "-c", "sidecar", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pod: Value = serde_json::from_slice(&out.stdout).expect("the manifest, as JSON");
    assert_tool_pod(&pod);
    assert_eq!(pod["metadata"]["annotations"]["leakd/container-id"], SIDECAR_ID);
    assert_eq!(
        pod["metadata"]["annotations"]["leakd/target"],
        format!("memleak-demo/{POD}/sidecar")
    );
    // Read, nothing created.
    let log = plugin.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0][..2], ["get", "pod"]);

    if !validator_present() {
        return;
    }
    let file = plugin.state.0.join("dry-run.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let (ok, report) = validate(&[&file]);
    assert!(ok, "{report}");
    assert!(report.contains("passed for resource pod/leakd-attach-"), "{report}");
}

#[test]
fn plugin_runs_the_tool_on_the_container_and_deletes_its_pod() {
    let plugin = Plugin::new("run");
    let out = plugin
        .cmd(&["-n", "memleak-demo", POD, "--", "-i", "5", "--symbolize"], "finish")
        .env("FAKE_KUBECTL_EXIT", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "the tool's exit status: {}", stderr(&out));
    let pod = plugin.created();
    assert_tool_pod(&pod);
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("leakd-attach-"), "{name}");

    let log = plugin.log();
    let get = position(&log, &["get", "pod", POD, "-n", "memleak-demo"]);
    let create = position(&log, &["create", "-f", "-"]);
    let wait = position(&log, &["wait", "-n", "leakd", &format!("pod/{name}")]);
    // The default container (the pod's annotation names it), by its id.
    let exec = position(
        &log,
        &[
            "exec",
            "-n",
            "leakd",
            &name,
            "-c",
            "leakd",
            "--",
            "leakd-attach",
            "--container",
            LEAKER_ID,
            "-i",
            "5",
            "--symbolize",
        ],
    );
    let delete = position(&log, &["delete", "pod", "-n", "leakd", &name]);
    assert!(get < create && create < wait && wait < exec && exec < delete, "{log:?}");
    assert_eq!(log.len(), 5, "{log:?}");

    // The tool's lines, as it wrote them.
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["type"], "start");
    assert_eq!(
        lines[0]["argv"],
        serde_json::json!(["leakd-attach", "--container", LEAKER_ID, "-i", "5", "--symbolize"])
    );
    assert_eq!(lines[1]["type"], "final");
    assert!(stderr(&out).contains("leakd-attach: attached"), "the tool's log: {}", stderr(&out));
}

#[test]
fn plugin_picks_the_named_container_and_refuses_bad_targets() {
    let plugin = Plugin::new("pick");
    let out = plugin.output(&["-n", "memleak-demo", POD, "-c", "sidecar", "--tool", "syscount"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = plugin.log();
    position(&log, &["exec", "-n", "leakd"]);
    let exec = &log[position(&log, &["exec"])];
    assert_eq!(exec[exec.len() - 3..], ["syscount", "--container", SIDECAR_ID]);

    for (args, code, msg) in [
        (
            &["-n", "memleak-demo", "nope"][..],
            1,
            r#"reading pod nope: Error from server (NotFound): pods "nope" not found"#,
        ),
        (&[POD][..], 1, "not found"),
        (
            &["-n", "memleak-demo", POD, "-c", "nope"][..],
            1,
            "has no container 'nope'; its containers: leaker, sidecar, crashing",
        ),
        (
            &["-n", "memleak-demo", POD, "-c", "crashing"][..],
            1,
            "is not running (waiting: CrashLoopBackOff)",
        ),
        (&["-n", "memleak-demo", POD, "--tool", "symres"][..], 2, "--tool must be one of"),
        (&["--all-nodes", "--tool", "leakd-attach"][..], 2, "leakd-attach needs a target"),
        (&[][..], 2, "a POD is needed"),
    ] {
        let plugin = Plugin::new("bad");
        let out = plugin.output(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(msg), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert!(!plugin.log().iter().any(|a| a[0] == "create"), "{args:?} created something");
    }
}

fn spawn(mut cmd: Command) -> (KillOnDrop, std::process::ChildStdout) {
    let mut child: Child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    (KillOnDrop(child), out)
}

/// Ctrl-C: the tool is asked to stop (its final report still comes
/// through), then the pod is deleted.
#[test]
fn plugin_on_sigint_stops_the_tool_then_deletes_its_pod() {
    let plugin = Plugin::new("sigint");
    let (child, stdout) = spawn(plugin.cmd(&["-n", "memleak-demo", POD], "until-stop"));
    let name = plugin_pod_running(&plugin);
    support::interrupt(&child.0);
    let (code, out) = finish((child, stdout), Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let lines = json_lines(&out);
    assert_eq!(
        lines.iter().map(|l| l["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["start", "final"]
    );
    let log = plugin.log();
    let stop = position(
        &log,
        &["exec", "-n", "leakd", &name, "-c", "leakd", "--", "leakd-idle", "--stop"],
    );
    let delete = position(&log, &["delete", "pod", "-n", "leakd", &name]);
    assert!(stop < delete, "{log:?}");
}

/// A second Ctrl-C gives up waiting for a tool that does not stop; the pod
/// is deleted all the same.
#[test]
fn plugin_on_second_sigint_gives_up_and_still_deletes_its_pod() {
    let plugin = Plugin::new("sigint2");
    let (child, stdout) = spawn(plugin.cmd(&["-n", "memleak-demo", POD], "ignore-stop"));
    let name = plugin_pod_running(&plugin);
    support::interrupt(&child.0);
    plugin.wait_file(&format!("stop-{name}"));
    support::interrupt(&child.0);
    let (code, out) = finish((child, stdout), Duration::from_secs(30));
    assert_eq!(code, Some(130));
    assert_eq!(json_lines(&out).len(), 1, "the start line only");
    let log = plugin.log();
    position(&log, &["delete", "pod", "-n", "leakd", &name]);
    // The stand-in's exec (the tool's stream) was ended, not left behind.
    let exec_pid = exec_pid(&plugin, &name);
    assert!(
        !Path::new(&format!("/proc/{exec_pid}")).exists(),
        "kubectl exec {exec_pid} left running"
    );
}

/// SIGTERM (the terminal closed, a supervisor) cleans up like Ctrl-C.
#[test]
fn plugin_on_sigterm_deletes_its_pod() {
    let plugin = Plugin::new("sigterm");
    let (child, stdout) = spawn(plugin.cmd(&["-n", "memleak-demo", POD], "until-stop"));
    let name = plugin_pod_running(&plugin);
    support::signal(child.0.id(), libc::SIGTERM);
    let (code, _) = finish((child, stdout), Duration::from_secs(30));
    assert_eq!(code, Some(0));
    position(&plugin.log(), &["delete", "pod", "-n", "leakd", &name]);
}

/// The name of the plugin's pod, once the tool runs in it.
fn plugin_pod_running(plugin: &Plugin) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(plugin.state.0.join("created.json")) {
            if let Ok(pod) = serde_json::from_str::<Value>(&text) {
                let name = pod["metadata"]["name"].as_str().unwrap().to_string();
                plugin.wait_file(&format!("running-{name}"));
                return name;
            }
        }
        assert!(Instant::now() < deadline, "no pod created");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the stand-in kubectl that ran the tool in `pod`.
fn exec_pid(plugin: &Plugin, pod: &str) -> u64 {
    let text = std::fs::read_to_string(plugin.state.0.join("log.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| {
            let a = &v["argv"];
            a[0] == "exec" && a[3] == pod && a[8] != "--stop"
        })
        .and_then(|v| v["pid"].as_u64())
        .expect("the tool's exec")
}

/// --all-nodes: the tool runs in each running DaemonSet pod, and the lines
/// of all come out as one stream, each with its node.
#[test]
fn plugin_all_nodes_merges_lines_with_their_node() {
    let plugin = Plugin::new("all");
    let out = plugin.output(&["--all-nodes", "--tool", "syscount", "--", "-P"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 4, "two lines from each of the two running pods: {lines:?}");
    let pod_node = [("leakd-4xk9p", "worker-1"), ("leakd-b7m2q", "worker-2")];
    for l in &lines {
        let (_, node) = pod_node.iter().find(|(p, _)| l["pod"] == *p).expect("a known pod");
        // "node" right after "type", replacing any the tool wrote.
        let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        assert_eq!(keys[..2], ["type", "node"], "{l}");
        assert_eq!(l["node"], *node, "{l}");
    }
    for (pod, _) in pod_node {
        let of_pod: Vec<&Value> = lines.iter().filter(|l| l["pod"] == pod).collect();
        assert_eq!(of_pod.len(), 2);
        assert_eq!(of_pod[0]["argv"], serde_json::json!(["syscount", "-P"]));
        assert_eq!(of_pod[1]["type"], "final");
    }
    let err = stderr(&out);
    assert!(err.contains("worker-1: syscount: attached"), "{err}");
    assert!(err.contains("worker-2: syscount: attached"), "{err}");
    assert!(err.contains("skipping pod leakd-zt5wn on node worker-3: Pending"), "{err}");
    let log = plugin.log();
    position(&log, &["get", "pods", "-n", "leakd", "-l", "app.kubernetes.io/name=leakd"]);
    let execs: BTreeSet<&str> =
        log.iter().filter(|a| a[0] == "exec").map(|a| a[3].as_str()).collect();
    assert_eq!(execs, BTreeSet::from(["leakd-4xk9p", "leakd-b7m2q"]));
    assert!(!log.iter().any(|a| a[0] == "create" || a[0] == "delete"), "{log:?}");

    // --dry-run: the commands, one per running node, none run.
    let plugin = Plugin::new("all-dry");
    let out = plugin.output(&["--all-nodes", "--dry-run", "--", "-x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["node"], "worker-1");
    let token = lines[0]["command"][10].as_str().unwrap().to_string();
    assert!(token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert_eq!(
        lines[0]["command"],
        serde_json::json!([
            "kubectl",
            "exec",
            "-n",
            "leakd",
            "leakd-4xk9p",
            "-c",
            "leakd",
            "--",
            "leakd-idle",
            "--session",
            token,
            "--",
            "execsnoop",
            "-x"
        ])
    );
    assert_eq!(lines[1]["node"], "worker-2");
    // One read-only get, nothing else.
    assert_eq!(
        plugin.log(),
        [["get", "pods", "-n", "leakd", "-l", "app.kubernetes.io/name=leakd", "-o", "json"]]
    );
}

/// Ctrl-C with --all-nodes stops the tool on every node; each node's final
/// lines still come through.
#[test]
fn plugin_all_nodes_on_sigint_stops_every_node() {
    let plugin = Plugin::new("all-sigint");
    let (child, stdout) = spawn(plugin.cmd(&["--all-nodes"], "until-stop"));
    plugin.wait_file("running-leakd-4xk9p");
    plugin.wait_file("running-leakd-b7m2q");
    support::interrupt(&child.0);
    let (code, out) = finish((child, stdout), Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let lines = json_lines(&out);
    let finals: BTreeSet<&str> = lines
        .iter()
        .filter(|l| l["type"] == "final")
        .map(|l| l["node"].as_str().unwrap())
        .collect();
    assert_eq!(finals, BTreeSet::from(["worker-1", "worker-2"]));
    let log = plugin.log();
    for pod in ["leakd-4xk9p", "leakd-b7m2q"] {
        position(&log, &["exec", "-n", "leakd", pod, "-c", "leakd", "--", "leakd-idle", "--stop"]);
    }
}

/// The DaemonSet's pods are shared: two users' --all-nodes runs at once,
/// and one's Ctrl-C stops its own tools only (its session's token), the
/// other's run on until it is stopped in turn.
#[test]
fn plugin_all_nodes_stops_only_its_own_session() {
    let plugin = Plugin::new("sessions");
    let (first, first_out) = spawn(plugin.cmd(&["--all-nodes"], "until-stop"));
    let (second, second_out) =
        spawn(plugin.cmd(&["--all-nodes", "--tool", "syscount"], "until-stop"));
    // Both sessions' tools run in both pods.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sessions = |pod: &str| -> BTreeSet<String> {
        std::fs::read_dir(&plugin.state.0)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_prefix(&format!("running-{pod}-")).map(String::from)
            })
            .collect()
    };
    while sessions("leakd-4xk9p").len() < 2 || sessions("leakd-b7m2q").len() < 2 {
        assert!(Instant::now() < deadline, "the two sessions never both ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let both = sessions("leakd-4xk9p");
    assert_eq!(both, sessions("leakd-b7m2q"), "one token per session, the same on every node");

    support::interrupt(&first.0);
    let (code, out) = finish((first, first_out), Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let finals = json_lines(&out).iter().filter(|l| l["type"] == "final").count();
    assert_eq!(finals, 2, "the first session's tools ended on both nodes");
    // One token was stopped, on both pods; the other session runs on.
    let log = plugin.raw_log();
    let stops: Vec<(&str, &str)> = log
        .iter()
        .filter(|a| a[0] == "exec" && a[7] == "leakd-idle" && a[8] == "--stop")
        .map(|a| (a[3].as_str(), a[9].as_str()))
        .collect();
    assert_eq!(stops.len(), 2, "{log:?}");
    let stopped = stops[0].1;
    assert!(both.contains(stopped), "{stopped} in {both:?}");
    assert!(stops.iter().all(|(_, t)| *t == stopped), "{stops:?}");
    let mut second = second;
    std::thread::sleep(Duration::from_millis(500));
    assert!(second.0.try_wait().unwrap().is_none(), "the other session's run ended too");

    support::interrupt(&second.0);
    let (code, out) = finish((second, second_out), Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let lines = json_lines(&out);
    assert_eq!(lines.iter().filter(|l| l["type"] == "final").count(), 2);
    assert!(lines.iter().all(|l| l["type"] != "start" || l["argv"][0] == "syscount"), "{lines:?}");
}

/// A malformed pod from kubectl (a container without a name, a field of the
/// wrong type) is an error of the plugin's, not a Python traceback.
#[test]
fn plugin_reports_a_malformed_pod() {
    let good: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/k8s/pod.json")).unwrap(),
    )
    .unwrap();
    /// What is broken, how, and what the error says.
    type Edit = (&'static str, fn(&mut Value), &'static str);
    let edits: [Edit; 4] = [
        (
            "a container without a name",
            |p| {
                p["spec"]["containers"][1].as_object_mut().unwrap().remove("name");
            },
            "spec.containers[1] has no name",
        ),
        (
            "containers not a list",
            |p| p["spec"]["containers"] = Value::from(7),
            "containers is a int",
        ),
        ("status a string", |p| p["status"] = Value::from("x"), "status is a str"),
        (
            "a state of the wrong type",
            |p| p["status"]["containerStatuses"][0]["state"] = Value::from(1),
            "state is a int",
        ),
    ];
    for (what, edit, msg) in edits {
        let plugin = Plugin::new("malformed");
        let mut pod = good.clone();
        edit(&mut pod);
        let file = plugin.state.0.join("malformed-pod.json");
        std::fs::write(&file, pod.to_string()).unwrap();
        let out = plugin
            .cmd(&["-n", "memleak-demo", POD], "finish")
            .env("FAKE_KUBECTL_POD", &file)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.starts_with("kubectl-leakd: error: "), "{what}: {err}");
        assert!(err.contains(msg), "{what}: {err}");
        assert!(!err.contains("Traceback"), "{what}: {err}");
        assert!(!plugin.log().iter().any(|a| a[0] == "create"), "{what}");
    }
}

/// --help: the two forms of the command, once each, and what --dry-run
/// still does.
#[test]
fn plugin_help_shows_each_form_once() {
    let plugin = Plugin::new("help");
    let out = plugin.output(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let forms: Vec<&str> =
        text.lines().map(str::trim).filter(|l| l.starts_with("kubectl leakd ")).collect();
    assert_eq!(
        forms,
        [
            "kubectl leakd [-n NS] POD [-c CONTAINER] [--tool NAME] [--dry-run] [-- TOOL-ARGS]",
            "kubectl leakd --all-nodes [--tool execsnoop|syscount] [--dry-run] [-- TOOL-ARGS]",
        ],
        "{text}"
    );
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("nothing is created or run, after one read-only kubectl get"), "{text}");
    assert!(plugin.log().is_empty());
}

/// leakd-idle --session/--stop, for real: in a container of the image run as the
/// DaemonSet runs it (privileged, the host's PIDs), two sessions' tools
/// started beside it with exec: stopping one session's sends SIGINT to that
/// tool alone, which ends, while the other runs on until stopped in turn;
/// a host process is left alone, though the container sees it.
#[test]
fn idle_stop_ends_the_tools_of_its_own_container_only() {
    if !support::root_available("container") || !required("podman", runs("podman", &["--version"]))
    {
        return;
    }
    let mut podman = Podman::new();
    let image = build_image(&mut podman, "idle");
    let idle = format!("leakd-test-idle-{}", std::process::id());
    podman.containers.push(idle.clone());
    podman.run(
        &[&["run", "-d", "--name", idle.as_str()][..], RUN_TOOLS, &["--network", "none", &image]]
            .concat(),
    );
    let host = KillOnDrop(Command::new("sleep").arg("600").spawn().unwrap());

    // Two sessions' execsnoop in the one container, as two users'
    // kubectl leakd --all-nodes in a DaemonSet's pod.
    let session = |token: &str| {
        let mut child = podman
            .cmd()
            .args(["exec", &idle, "leakd-idle", "--session", token, "--"])
            .args(["execsnoop", "-v", "-d", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let err = BufReader::new(child.stderr.take().unwrap());
        (KillOnDrop(child), err, stdout)
    };
    let (a, a_err, a_out) = session("aaaa1111");
    wait_attached(a, a_err, a_out, |a, log| {
        assert!(log.contains("attached"), "execsnoop of session a never attached: {log}");
        let (b, b_err, b_out) = session("bbbb2222");
        wait_attached(b, b_err, b_out, |mut b, log| {
            assert!(log.contains("attached"), "execsnoop of session b never attached: {log}");
            let started = Instant::now();
            let out = podman.run(&["exec", &idle, "leakd-idle", "--stop", "aaaa1111"]);
            assert_eq!(
                stderr(&out).trim(),
                "leakd-idle: sent SIGINT to 1 process(es) of session aaaa1111"
            );
            let (code, _) = finish(a, Duration::from_secs(60));
            assert_eq!(code, Some(0), "execsnoop a ends as on Ctrl-C");
            assert!(started.elapsed() < Duration::from_secs(60), "ended by the signal, not by -d");
            std::thread::sleep(Duration::from_millis(500));
            assert!(b.0 .0.try_wait().unwrap().is_none(), "stopping session a stopped b too");

            let out = podman.run(&["exec", &idle, "leakd-idle", "--stop", "bbbb2222"]);
            assert_eq!(
                stderr(&out).trim(),
                "leakd-idle: sent SIGINT to 1 process(es) of session bbbb2222"
            );
            let (code, _) = finish(b, Duration::from_secs(60));
            assert_eq!(code, Some(0), "execsnoop b ends as on Ctrl-C");
        });
    });
    // No session's token, no stop of them all.
    let out = podman.cmd().args(["exec", &idle, "leakd-idle", "--stop"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(Path::new(&format!("/proc/{}", host.0.id())).exists(), "the host's sleep lives on");
    // The idle process itself is still there, and ends at once on SIGTERM.
    let out = podman.run(&["inspect", "-f", "{{.State.Running}}", &idle]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true");
    let started = Instant::now();
    podman.run(&["stop", "-t", "30", &idle]);
    assert!(started.elapsed() < Duration::from_secs(20), "leakd-idle ends on SIGTERM");
}

/// scripts/image with docker, where podman is not the engine: the same
/// image, whose files are the tools, leakers, man pages, leakd-idle, and
/// the shared objects and loader they need, nothing else.
#[test]
fn image_builds_with_docker_too() {
    if !support::root_available("container")
        || !required("docker with its daemon", runs("docker", &["version"]))
    {
        return;
    }
    let id = std::process::id();
    let tag = format!("localhost/leakd-test-docker-{id}:latest");
    let name = format!("leakd-test-docker-{id}");
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.1]).output();
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(tag.clone(), name.clone());
    let out = Command::new(repo().join("scripts/image"))
        .args(["--from", bin_dir().to_str().unwrap(), "--tag", &tag, "--engine", "docker"])
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/image: {}", stderr(&out));
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", &tag, "symres", "--version"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("symres "), "{}", stderr(&out));

    let out = Command::new("docker").args(["create", "--name", &name, &tag]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut export =
        Command::new("docker").args(["export", &name]).stdout(Stdio::piped()).spawn().unwrap();
    let out = Command::new("tar").arg("-t").stdin(export.stdout.take().unwrap()).output().unwrap();
    assert!(export.wait().unwrap().success());
    let files: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.trim_start_matches("./").to_string())
        .collect();
    let mut want: BTreeSet<String> =
        ["leaker", "leaker-nofp", "leakd-idle"].iter().map(|b| format!("usr/bin/{b}")).collect();
    for t in TOOLS {
        want.insert(format!("usr/bin/{t}"));
        want.insert(format!("usr/share/man/man8/{t}.8"));
    }
    let rest: Vec<&String> = files.difference(&want).collect();
    assert!(want.is_subset(&files), "missing: {:?}", want.difference(&files).collect::<Vec<_>>());
    // Beyond those: the shared objects and the loader only (docker adds
    // /dev, /etc and /.dockerenv entries to every container; the image has
    // no /dev or /etc of its own).
    assert!(rest.iter().any(|f| f.as_str() == "lib64/ld-linux-x86-64.so.2"), "{rest:?}");
    assert!(rest.iter().any(|f| f.ends_with("/libc.so.6")), "{rest:?}");
    for f in rest {
        assert!(
            f.contains(".so")
                || f.starts_with("dev/")
                || f.starts_with("etc/")
                || f == ".dockerenv",
            "unexpected file in the image: {f}"
        );
    }
}

/// A reader that goes away (`kubectl leakd ... | head -1`) ends the run at
/// once, quietly (exit 0), with the remote tools stopped and the pod
/// deleted, though the tools have nothing more to write.
#[test]
fn plugin_stops_the_tools_when_its_reader_goes() {
    for (args, stops) in [
        (&["--all-nodes"][..], &["leakd-4xk9p", "leakd-b7m2q"][..]),
        (&["-n", "memleak-demo", POD][..], &[][..]),
    ] {
        let plugin = Plugin::new("reader");
        let (mut child, stdout) = spawn(plugin.cmd(args, "until-stop"));
        let mut first = String::new();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut first).unwrap();
        assert_eq!(json_lines(first.as_bytes())[0]["type"], "start", "{first}");
        drop(reader);
        let started = Instant::now();
        let status = child.0.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "{args:?}: did not notice");
        let log = plugin.log();
        let mut stopped: Vec<&str> = log
            .iter()
            .filter(|a| a.len() == 10 && a[0] == "exec" && a[7] == "leakd-idle" && a[8] == "--stop")
            .map(|a| a[3].as_str())
            .collect();
        stopped.sort();
        if stops.is_empty() {
            // The tool pod: stopped and deleted.
            let name = plugin.created()["metadata"]["name"].as_str().unwrap().to_string();
            assert_eq!(stopped, [name.as_str()]);
            position(&log, &["delete", "pod", "-n", "leakd", &name]);
        } else {
            assert_eq!(stopped, stops, "{log:?}");
        }
    }
}

/// The image's leakd-attach on a process of the host, by its host PID
/// (-p): the allocator is found through /proc/PID/root, not in the image.
#[test]
fn image_finds_the_leak_of_a_host_process() {
    if !support::root_available("container") || !required("podman", runs("podman", &["--version"]))
    {
        return;
    }
    let mut podman = Podman::new();
    let image = build_image(&mut podman, "host");
    let tool = format!("leakd-test-host-tool-{}", std::process::id());
    podman.containers.push(tool.clone());
    let (mut leaker, pid, mut err) =
        support::start_leaker(&["ten-nine", "--wait-signal", "--linger", "1"]);
    let pid_s = pid.to_string();
    let mut child = podman
        .cmd()
        .args(["run", "--rm", "--name", &tool])
        .args(RUN_TOOLS)
        .args(["--network", "none", &image, "leakd-attach", "-v", "--symbolize", "-p", &pid_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let tool_err = BufReader::new(child.stderr.take().unwrap());
    wait_attached(KillOnDrop(child), tool_err, stdout, |child, log| {
        assert!(log.contains("attached"), "the tool in the image never attached: {log}");
        support::signal(pid, libc::SIGUSR1);
        let mut rest = String::new();
        err.read_to_string(&mut rest).unwrap();
        assert!(leaker.0.wait().unwrap().success());
        let (code, out) = finish(child, Duration::from_secs(60));
        assert_eq!(code, Some(3), "leaks found => exit 3");
        let lines = json_lines(&out);
        let (r, stacks) = final_report(&lines);
        assert_eq!(r["pid"], pid);
        assert_eq!(r["outstanding_count"], 1, "{lines:?}");
        assert_eq!(r["outstanding_bytes"], 8);
        assert_eq!(stacks.len(), 1, "{lines:?}");
        assert_eq!(stacks[0]["allocs"], 10);
        assert_eq!(stacks[0]["frees"], 9);
        assert_eq!(stacks[0]["stack"][0]["sym"], "leak_ten_nine_alloc", "{}", stacks[0]);
    });
}

/// The README's command: the image's leakd-attach on another container by
/// its id (--container), symbolized, stopped as on Ctrl-C.
#[test]
fn image_finds_the_leak_in_a_container_by_its_id() {
    if !support::root_available("container") || !required("podman", runs("podman", &["--version"]))
    {
        return;
    }
    let mut podman = Podman::new();
    let image = build_image(&mut podman, "byid");
    let id = std::process::id();
    let leaker = format!("leakd-test-byid-leaker-{id}");
    let tool = format!("leakd-test-byid-tool-{id}");
    podman.containers.push(leaker.clone());
    podman.containers.push(tool.clone());
    let out = podman.run(&[
        "run",
        "-d",
        "--name",
        &leaker,
        "--network",
        "none",
        &image,
        "leaker",
        "ten-nine",
        "--wait-signal",
        "--linger",
        "inf",
    ]);
    let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(cid.len(), 64, "{cid}");
    wait_logs(&podman, &leaker, "leaker_ready");
    let pid = container_pid(&podman, &leaker);

    let mut child = podman
        .cmd()
        .args(["run", "--rm", "--name", &tool])
        .args(RUN_TOOLS_SYS_ONLY)
        .args(["--network", "none", &image, "leakd-attach", "-v", "--container", &cid])
        .arg("--symbolize")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    wait_attached(KillOnDrop(child), err, stdout, |child, log| {
        assert!(log.contains("attached"), "the tool in the image never attached: {log}");
        support::signal(pid, libc::SIGUSR1);
        wait_logs(&podman, &leaker, "leaker_summary");
        // Ctrl-C, as a user stops it: the final report.
        podman.run(&["kill", "--signal", "INT", &tool]);
        let (code, out) = finish(child, Duration::from_secs(60));
        assert_eq!(code, Some(3), "leaks found => exit 3");
        let lines = json_lines(&out);
        let (r, stacks) = final_report(&lines);
        assert_eq!(r["outstanding_count"], 1, "{lines:?}");
        assert_eq!(r["outstanding_bytes"], 8);
        assert_eq!(stacks.len(), 1, "{lines:?}");
        assert_eq!(stacks[0]["allocs"], 10);
        assert_eq!(stacks[0]["frees"], 9);
        assert_eq!(stacks[0]["stack"][0]["sym"], "leak_ten_nine_alloc", "{}", stacks[0]);
        assert_eq!(r["container"]["id"], cid.as_str(), "{r}");
    });
}

use crate::support::final_report;

/// kubectl itself finds the plugin on PATH and hands it its arguments,
/// -n included: `kubectl leakd ...` is the command users type.
#[test]
fn kubectl_runs_the_plugin() {
    if !required("kubectl", runs("kubectl", &["version", "--client"])) {
        return;
    }
    let plugin = Plugin::new("via-kubectl");
    let path = format!("{}:{}", repo().join("deploy").display(), std::env::var("PATH").unwrap());
    let out = Command::new("kubectl").args(["plugin", "list"]).env("PATH", &path).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains(&repo().join("deploy/kubectl-leakd").display().to_string()), "{list}");
    let out = Command::new("kubectl")
        .args(["leakd", "-n", "memleak-demo", POD, "-c", "sidecar", "--dry-run"])
        .env("PATH", &path)
        // The plugin's own kubectl calls go to the stand-in.
        .env("KUBECTL", repo().join("tests/fixtures/k8s/kubectl"))
        .env("FAKE_KUBECTL_DIR", &plugin.state.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pod["metadata"]["annotations"]["leakd/container-id"], SIDECAR_ID);
}

/// kubectl's --context and --kubeconfig, given to the plugin, go with every
/// kubectl command it runs (the cluster it reads is the one it acts on).
#[test]
fn plugin_passes_context_and_kubeconfig_on() {
    for args in [
        &["--context", "prod", "--kubeconfig", "/k/config", "-n", "memleak-demo", POD][..],
        &["--all-nodes", "--context", "prod", "--kubeconfig", "/k/config"][..],
    ] {
        let plugin = Plugin::new("context");
        let out = plugin.output(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let log = plugin.log();
        assert!(log.len() >= 3, "{log:?}");
        for a in &log {
            assert_eq!(a[..4], ["--context", "prod", "--kubeconfig", "/k/config"], "{a:?}");
        }
    }
}
