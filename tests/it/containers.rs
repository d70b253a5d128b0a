//! The tracers against real containers (issue 22): podman, docker,
//! containerd (ctr) and a bare runc container shaped like a kubelet's, each
//! running the leaker from an image built here from local files (no registry
//! is reachable). Every container, image and cgroup a test creates is
//! removed by a guard when the test ends, failed or not. Outside CI a
//! runtime that cannot start skips its tests with a note; in CI it fails
//! them (scripts/setup --containers installs and starts the runtimes).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use leakd_test_macros::bpf_test;
use serde_json::Value;

use crate::support::{
    bin, interrupt, json_lines, of_type, signal, spawn_attached, KillOnDrop, LEAKER,
};

use crate::support::in_ci;

/// Whether `cli` can run containers here; in CI a missing runtime fails.
fn runtime(cli: &str) -> bool {
    // runc has no "version" subcommand (exit 3): --version.
    let arg = if cli == "runc" { "--version" } else { "version" };
    let ok = Command::new(cli).arg(arg).output().is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    assert!(!in_ci(), "{cli} cannot run here (CI is set): run scripts/setup --containers");
    eprintln!("note: skipping {cli} test: {cli} is not available (scripts/setup --containers)");
    false
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A unique tag for names, so tests running at once (and other users of
/// the machine) never meet.
fn tag(what: &str) -> String {
    format!("leakd-test-{what}-{}", std::process::id())
}

/// Runs cleanup commands when dropped, last added first; failures ignored
/// (the object may already be gone).
#[derive(Default)]
struct Cleanup(Vec<Vec<String>>);

impl Cleanup {
    fn add(&mut self, cmd: &[&str]) {
        self.0.push(cmd.iter().map(|s| s.to_string()).collect());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for cmd in self.0.iter().rev() {
            if cmd[0] == "rmdir" {
                let _ = std::fs::remove_dir(&cmd[1]);
                continue;
            }
            let _ = Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A root filesystem holding /leaker and the shared objects it needs (ldd),
/// or a static leaker alone; removed by `cleanup`.
fn rootfs(static_build: bool, what: &str, cleanup: &mut Cleanup) -> PathBuf {
    let dir = std::env::temp_dir().join(tag(&format!("rootfs-{what}")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    cleanup.add(&["rm", "-rf", dir.to_str().unwrap()]);
    if static_build {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/leaker/leaker.c");
        let out = dir.join("leaker");
        run(&[
            "gcc",
            "-static",
            "-O1",
            "-fno-omit-frame-pointer",
            "-o",
            out.to_str().unwrap(),
            src,
            "-lpthread",
        ]);
    } else {
        std::fs::copy(LEAKER, dir.join("leaker")).unwrap();
        for line in run(&["ldd", LEAKER]).lines() {
            let path = line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from);
            let Some(path) = path else { continue };
            let to = dir.join(path.strip_prefix("/").unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&path, &to).unwrap();
        }
    }
    dir
}

/// An image of `rootfs` imported into `cli` (podman or docker).
fn image(cli: &str, static_build: bool, what: &str, cleanup: &mut Cleanup) -> String {
    let name = format!("localhost/{}:1", tag(&format!("img-{what}")));
    let dir = rootfs(static_build, what, cleanup);
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = tar.stdout.take().unwrap();
    let out = Command::new(cli).args(["import", "-", &name]).stdin(stdin).output().unwrap();
    assert!(tar.wait().unwrap().success(), "tar of {}", dir.display());
    assert!(out.status.success(), "{cli} import: {}", String::from_utf8_lossy(&out.stderr));
    cleanup.add(&[cli, "rmi", "-f", &name]);
    name
}

/// A leaker running in a container: the runtime's client process (its
/// stderr is the leaker's), the container's id and the leaker's host pid.
struct Running {
    _client: KillOnDrop,
    err: BufReader<ChildStderr>,
    id: String,
    pid: u32,
}

impl Running {
    /// Start `cmd` (a runtime's foreground run) and wait for the leaker's
    /// ready line; `id` then finds the container's id.
    fn start(cmd: &[&str], id: impl FnOnce() -> String) -> Running {
        let mut child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let client = KillOnDrop(child);
        let mut line = String::new();
        loop {
            line.clear();
            let n = err.read_line(&mut line).unwrap();
            assert!(n > 0, "{cmd:?} ended before the leaker was ready");
            if line.contains("leaker_ready") {
                break;
            }
        }
        let id = id();
        assert_eq!(id.len(), 64, "container id {id:?}");
        let pid = host_pid(&id);
        Running { _client: client, err, id, pid }
    }

    /// Wait for the leaker's summary line (its workload is done).
    fn summary(&mut self) -> Value {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.err.read_line(&mut line).unwrap();
            assert!(n > 0, "the leaker ended without a summary");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["type"] == "leaker_summary" {
                    return v;
                }
            }
        }
    }
}

/// The host pid of the leaker in container `id`, from /proc/*/cgroup.
fn host_pid(id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "leaker" && cg.lines().any(|l| l.starts_with("0::") && l.contains(id))
            {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no leaker process in container {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The leaker's workload: ten 4096-byte blocks leaked by steady_leak once
/// it gets SIGUSR1, then it stays up.
const STEADY: &[&str] = &[
    "/leaker",
    "steady",
    "--size",
    "4096",
    "--interval",
    "0.01",
    "--max",
    "40960",
    "--wait-signal",
    "--linger",
    "inf",
];

fn wait_output(mut child: Child) -> (Option<i32>, Vec<Value>, String) {
    let mut stdout = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    (status.code(), json_lines(&stdout), String::new())
}

use crate::support::final_report;

/// How the runs of [`leak_found_by_each`] end.
enum Stop<'a> {
    /// Ctrl-C to each tool.
    Interrupt,
    /// This command stops the container; the tools must end by themselves
    /// with their final report.
    Container(&'a [&'a str]),
}

/// Attach one leakd-attach per selector, start the leaker's workload, and
/// check each found exactly its ten blocks at steady_leak, with the
/// container's fields on the stack lines and, for the selectors of one
/// container (-p, --container), on the report line too; the pod's when in
/// one (on the report line of --pod and --pod-uid too).
fn leak_found_by_each(
    c: &mut Running,
    selectors: &[Vec<String>],
    want_container: &Value,
    want_pod: Option<&Value>,
    stop: Stop<'_>,
) {
    leak_found_by_each_beside(c, None, selectors, want_container, want_pod, stop);
}

/// [`leak_found_by_each`], with `beside` (another container of the same
/// image: the probe on their shared libc fires for both) leaking too.
fn leak_found_by_each_beside(
    c: &mut Running,
    beside: Option<&mut Running>,
    selectors: &[Vec<String>],
    want_container: &Value,
    want_pod: Option<&Value>,
    stop: Stop<'_>,
) {
    // The tools attach at once (each takes seconds on a loaded machine);
    // allocsnoop too, by the first selector: every 4096-byte block.
    let mut snoop_args: Vec<&str> = selectors[0].iter().map(String::as_str).collect();
    snoop_args.extend(["--min-size", "4096", "--max-size", "4096", "-d", "60"]);
    let (tools, snoop) = std::thread::scope(|scope| {
        let tools: Vec<_> = selectors
            .iter()
            .map(|sel| {
                scope.spawn(move || {
                    let mut args: Vec<&str> = sel.iter().map(String::as_str).collect();
                    args.extend(["--symbolize", "-d", "60"]);
                    let (tool, err) = spawn_attached("leakd-attach", &args);
                    crate::support::discard(err);
                    tool
                })
            })
            .collect();
        let snoop = scope.spawn(|| {
            let (snoop, err) = spawn_attached("allocsnoop", &snoop_args);
            crate::support::discard(err);
            snoop
        });
        let tools: Vec<Child> = tools.into_iter().map(|t| t.join().unwrap()).collect();
        (tools, snoop.join().unwrap())
    });
    signal(c.pid, libc::SIGUSR1);
    if let Some(b) = beside {
        signal(b.pid, libc::SIGUSR1);
        assert_eq!(b.summary()["leaked_count"], 10);
    }
    let summary = c.summary();
    assert_eq!(summary["leaked_count"], 10, "{summary}");
    match &stop {
        Stop::Interrupt => tools.iter().chain([&snoop]).for_each(interrupt),
        Stop::Container(cmd) => {
            run(cmd);
        }
    }
    let (code, lines, _) = wait_output(snoop);
    assert_eq!(code, Some(0), "allocsnoop {snoop_args:?}: {lines:?}");
    let allocs = of_type(&lines, "alloc");
    assert_eq!(allocs.len(), 10, "allocsnoop {snoop_args:?}: {lines:?}");
    for a in allocs {
        assert_eq!(a["op"], "malloc", "{a}");
        assert_eq!(a["pid"], c.pid, "{a}");
        assert_eq!(&a["container"], want_container, "{a}");
    }
    for (tool, sel) in tools.into_iter().zip(selectors) {
        let started = Instant::now();
        let (code, lines, _) = wait_output(tool);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{sel:?}: ended by -d, not by its target"
        );
        assert_eq!(code, Some(3), "{sel:?}: leaks found => exit 3; {lines:?}");
        let (r, stacks) = final_report(&lines);
        assert_eq!(r["outstanding_count"], 10, "{sel:?}: {lines:?}");
        assert_eq!(r["outstanding_bytes"], 40960, "{sel:?}: {lines:?}");
        assert_eq!(stacks.len(), 1, "{sel:?}: {lines:?}");
        let s = &stacks[0];
        // After the container is gone too (Stop::Container): its files
        // were loaded while it ran.
        assert_eq!(s["stack"][0]["sym"], "steady_leak", "{sel:?}: {s}");
        assert_eq!(s["allocs"], 10, "{sel:?}: {s}");
        let one_container = matches!(sel[0].as_str(), "-p" | "--container");
        let by_pod = matches!(sel[0].as_str(), "--pod" | "--pod-uid");
        assert_eq!(&s["container"], want_container, "{sel:?}: {s}");
        if one_container {
            assert_eq!(&r["container"], want_container, "{sel:?}: {r}");
        } else {
            assert!(r.get("container").is_none(), "{sel:?}: {r}");
        }
        match want_pod {
            Some(p) => {
                assert_eq!(&s["pod"], p, "{sel:?}: {s}");
                if one_container || by_pod {
                    assert_eq!(&r["pod"], p, "{sel:?}: {r}");
                }
            }
            None => assert!(s.get("pod").is_none() && r.get("pod").is_none(), "{sel:?}: {r} {s}"),
        }
    }
}

fn podman_run(name: &str, image: &str, args: &[&str]) -> Running {
    let mut cmd = vec!["podman", "run", "--rm", "--name", name, "--network", "none", image];
    cmd.extend(args);
    Running::start(&cmd, || run(&["podman", "inspect", "-f", "{{.Id}}", name]))
}

#[bpf_test]
fn podman_leak_by_name_id_prefix_and_pid() {
    if !runtime("podman") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let img = image("podman", false, "podman", &mut cleanup);
    let name = tag("podman");
    cleanup.add(&["podman", "rm", "-f", "-t", "0", &name]);
    let mut c = podman_run(&name, &img, STEADY);
    // The same image beside it, leaking the same: not counted.
    let other = tag("podman-other");
    cleanup.add(&["podman", "rm", "-f", "-t", "0", &other]);
    let mut b = podman_run(&other, &img, STEADY);
    let want = serde_json::json!({"id": c.id, "name": name, "runtime": "podman"});
    let sels = vec![
        vec!["--container".to_string(), name.clone()],
        vec!["--container".to_string(), c.id[..12].to_string()],
        vec!["-p".to_string(), c.pid.to_string()],
    ];
    leak_found_by_each_beside(&mut c, Some(&mut b), &sels, &want, None, Stop::Interrupt);
}

/// A static binary (no libc mapped: its own malloc) in a container, and
/// the container stopped while traced: the run ends with its final report.
#[bpf_test]
fn podman_static_binary_and_container_exit() {
    if !runtime("podman") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let img = image("podman", true, "static", &mut cleanup);
    let name = tag("static");
    cleanup.add(&["podman", "rm", "-f", "-t", "0", &name]);
    let mut c = podman_run(&name, &img, STEADY);
    let want = serde_json::json!({"id": c.id, "name": name, "runtime": "podman"});
    let sels = [vec!["--container".to_string(), c.id.clone()]];
    leak_found_by_each(
        &mut c,
        &sels,
        &want,
        None,
        Stop::Container(&["podman", "kill", "-s", "KILL", &name]),
    );
}

#[bpf_test]
fn docker_leak_by_name() {
    if !runtime("docker") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let img = image("docker", false, "docker", &mut cleanup);
    let name = tag("docker");
    cleanup.add(&["docker", "rm", "-f", &name]);
    let mut cmd = vec!["docker", "run", "--rm", "--name", &name, "--network", "none", &img];
    cmd.extend(STEADY);
    let mut c = Running::start(&cmd, || run(&["docker", "inspect", "-f", "{{.Id}}", &name]));
    let want = serde_json::json!({"id": c.id, "name": name, "runtime": "docker"});
    let sels = vec![
        vec!["--container".to_string(), name.clone()],
        vec!["-p".to_string(), c.pid.to_string()],
    ];
    leak_found_by_each(&mut c, &sels, &want, None, Stop::Interrupt);
}

/// A 64-hex id of the test's own.
fn hex_id(what: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag(what).bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}").repeat(4)
}

#[bpf_test]
fn containerd_leak_by_id() {
    if !runtime("ctr") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let id = hex_id("ctr");
    let ns = tag("ns");
    let ns = ns.as_str();
    // The task may still be stopping when the test ends, and containerd
    // leaves the namespace's cgroup (in every hierarchy): retried.
    let rm = format!(
        "for i in $(seq 50); do ctr -n {ns} tasks delete --force {id}; \
         ctr -n {ns} containers delete {id} && break; sleep 0.1; done; \
         ctr namespaces remove {ns}; \
         for i in $(seq 50); do left=; for h in /sys/fs/cgroup/*/; do \
         [ -d ${{h}}{ns} ] && ! rmdir ${{h}}{ns} 2>/dev/null && left=1; done; \
         [ -z \"$left\" ] && break; sleep 0.1; done; true"
    );
    cleanup.add(&["sh", "-c", &rm]);
    let root = rootfs(false, "ctr", &mut cleanup).to_str().unwrap().to_string();
    let mut cmd = vec!["ctr", "-n", ns, "run", "--rm", "--rootfs", &root, &id];
    cmd.extend(STEADY);
    let mut c = Running::start(&cmd, || id.clone());
    let want = serde_json::json!({"id": id, "name": id, "runtime": "containerd"});
    let sels = vec![vec!["--container".to_string(), id[..16].to_string()]];
    leak_found_by_each(&mut c, &sels, &want, None, Stop::Interrupt);
}

/// A runc container placed where a kubelet would place it (cgroupfs
/// driver, burstable pod) with the annotations CRI runtimes write: found by
/// --pod-uid, --pod NAMESPACE/NAME and --cgroup on the pod's directory.
#[bpf_test]
fn kubelet_shaped_runc_container_by_pod() {
    if !runtime("runc") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let id = hex_id("runc");
    let uid =
        format!("{}-{}-4{}-8{}-{}", &id[..8], &id[8..12], &id[13..16], &id[17..20], &id[20..32]);
    let bundle = std::env::temp_dir().join(tag("bundle"));
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).unwrap();
    cleanup.add(&["rm", "-rf", bundle.to_str().unwrap()]);
    run(&["runc", "spec", "-b", bundle.to_str().unwrap()]);
    let cfg_path = bundle.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["root"] =
        serde_json::json!({"path": rootfs(false, "runc", &mut cleanup), "readonly": true});
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = STEADY.iter().map(|s| Value::from(*s)).collect();
    let cgroups_path = format!("/kubepods/burstable/pod{uid}/{id}");
    cfg["linux"]["cgroupsPath"] = cgroups_path.clone().into();
    cfg["annotations"] = serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "leaker",
        "io.kubernetes.cri.sandbox-name": "leaky-pod",
        "io.kubernetes.cri.sandbox-namespace": "leakd-test",
        "io.kubernetes.cri.sandbox-uid": uid,
    });
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    // The parents runc creates, in every hierarchy (hybrid hosts have v1
    // ones too), removed leaf first after the container.
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let base = h.path();
        for rel in ["kubepods", "kubepods/burstable"] {
            let d = base.join(rel);
            if !d.exists() {
                cleanup.add(&["rmdir", d.to_str().unwrap()]);
            }
        }
        let pod = base.join(format!("kubepods/burstable/pod{uid}"));
        cleanup.add(&["rmdir", pod.to_str().unwrap()]);
    }
    cleanup.add(&["runc", "delete", "-f", &id]);
    let mut c =
        Running::start(&["runc", "run", "-b", bundle.to_str().unwrap(), &id], || id.clone());
    let mount = leakd_common::container::cgroup2_mount().unwrap();
    let pod_dir = mount.dir.join(format!("kubepods/burstable/pod{uid}"));
    let want = serde_json::json!({"id": id, "name": "leaker", "runtime": "runc"});
    let pod = serde_json::json!({"namespace": "leakd-test", "name": "leaky-pod", "uid": uid});
    let sels = vec![
        vec!["--pod-uid".to_string(), uid.clone()],
        vec!["--pod".to_string(), "leakd-test/leaky-pod".to_string()],
        vec!["--cgroup".to_string(), pod_dir.to_str().unwrap().to_string()],
    ];
    leak_found_by_each(&mut c, &sels, &want, Some(&pod), Stop::Interrupt);
}

/// `podman kube play`: a pod found by name, its containers' lines naming
/// it (podman pods have no namespace; their id is the uid).
#[bpf_test]
fn podman_kube_play_pod() {
    if !runtime("podman") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let img = image("podman", false, "kube", &mut cleanup);
    let pod_name = tag("pod");
    let yaml = std::env::temp_dir().join(format!("{pod_name}.yaml"));
    let args: Vec<String> = STEADY[1..].iter().map(|a| format!("{a:?}")).collect();
    std::fs::write(
        &yaml,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod_name}\nspec:\n  containers:\n  \
             - name: leaky\n    image: {img}\n    command: [\"/leaker\"]\n    args: [{}]\n",
            args.join(", ")
        ),
    )
    .unwrap();
    cleanup.add(&["rm", "-f", yaml.to_str().unwrap()]);
    // The pod's infra container needs podman's pause image, which podman
    // builds locally on first use: remove it after the pod if this test
    // made it (unforced, so another pod using it keeps it).
    let pause = ["podman", "images", "-q", "--filter", "reference=localhost/podman-pause"];
    if run(&pause).is_empty() {
        cleanup.add(&["sh", "-c", &format!("{} | xargs -r podman rmi", pause.join(" "))]);
    }
    cleanup.add(&["podman", "pod", "rm", "-f", "-t", "0", &pod_name]);
    run(&["podman", "kube", "play", "--network", "none", yaml.to_str().unwrap()]);
    let name = format!("{pod_name}-leaky");
    let mut c = Running::start(&["podman", "logs", "-f", &name], || {
        run(&["podman", "inspect", "-f", "{{.Id}}", &name])
    });
    let pod_id = run(&["podman", "pod", "inspect", "-f", "{{.Id}}", &pod_name]);
    let want = serde_json::json!({"id": c.id, "name": name, "runtime": "podman"});
    let pod = serde_json::json!({"namespace": null, "name": pod_name, "uid": pod_id});
    let sels = vec![vec!["--pod".to_string(), pod_name.clone()]];
    leak_found_by_each(&mut c, &sels, &want, Some(&pod), Stop::Interrupt);
}

/// Processes started in a traced container by `podman exec`: execsnoop
/// and syscount --container see them with the container's fields and
/// nothing from outside; system-wide execsnoop names their container;
/// leakd-attach --container, attached before, finds their leak.
#[bpf_test]
fn podman_exec_seen_by_every_tracer() {
    if !runtime("podman") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let img = image("podman", false, "exec", &mut cleanup);
    let name = tag("exec");
    cleanup.add(&["podman", "rm", "-f", "-t", "0", &name]);
    let c = podman_run(&name, &img, &["/leaker", "none", "--linger", "inf"]);
    let want = serde_json::json!({"id": c.id, "name": name, "runtime": "podman"});
    let (exec, exec_err) = spawn_attached("execsnoop", &["--container", &name, "-d", "60"]);
    crate::support::discard(exec_err);
    let (sc, sc_err) = spawn_attached("syscount", &["--container", &name, "-P", "-d", "60"]);
    crate::support::discard(sc_err);
    // System-wide: the fields come from the cgroup-id cache.
    let (all, all_err) = spawn_attached("execsnoop", &["--comm", "^leaker$", "-d", "60"]);
    crate::support::discard(all_err);
    // A process started in the container after attaching is traced (it
    // maps the allocator file probed at start, its image's libc).
    let (la, la_err) = spawn_attached("leakd-attach", &["--container", &name, "-d", "60"]);
    crate::support::discard(la_err);
    run(&["podman", "exec", &name, "/leaker", "none"]);
    run(&["podman", "exec", &name, "/leaker", "ten-nine"]);
    interrupt(&exec);
    interrupt(&sc);
    interrupt(&all);
    interrupt(&la);
    let (code, lines, _) = wait_output(la);
    assert_eq!(code, Some(3), "{lines:?}");
    let i = lines.iter().rposition(|v| v["type"] == "report").expect("a report");
    assert_eq!(lines[i]["outstanding_count"], 1, "{lines:?}");
    assert_eq!(lines[i]["outstanding_bytes"], 8, "{lines:?}");
    let stacks = of_type(&lines[i..], "stack");
    assert_eq!(stacks.len(), 1, "{lines:?}");
    assert_ne!(stacks[0]["pid"], c.pid, "{lines:?}");
    assert_eq!(stacks[0]["allocs"], 10, "{lines:?}");
    let (code, lines, _) = wait_output(all);
    assert_eq!(code, Some(0), "{lines:?}");
    let ours: Vec<&Value> = of_type(&lines, "exec")
        .into_iter()
        .filter(|e| e["container"]["id"] == want["id"])
        .collect();
    assert_eq!(ours.len(), 2, "{lines:?}");
    assert_eq!(ours[0]["container"], want);
    assert_eq!(ours[0]["argv"], serde_json::json!(["/leaker", "none"]));
    let (code, lines, _) = wait_output(exec);
    assert_eq!(code, Some(0), "{lines:?}");
    let execs = of_type(&lines, "exec");
    let leakers: Vec<&&Value> =
        execs.iter().filter(|e| e["argv"] == serde_json::json!(["/leaker", "none"])).collect();
    assert_eq!(leakers.len(), 1, "{lines:?}");
    assert_eq!(execs.len(), 2, "{lines:?}");
    for e in &execs {
        assert_eq!(e["container"], want, "{e}");
    }
    let (code, lines, _) = wait_output(sc);
    assert_eq!(code, Some(0), "{lines:?}");
    let rows = of_type(&lines, "process");
    // The exec'd leaker's calls (the first one sleeps, making none).
    assert!(rows.iter().any(|r| r["comm"] == "leaker" && r["pid"] != c.pid), "{lines:?}");
    for r in &rows {
        assert_eq!(r["container"], want, "{r}");
    }
}

/// Unknown selectors are errors naming what was searched (exit 1);
/// selectors that contradict each other are usage errors (exit 2).
#[test]
fn unknown_container_is_an_error_naming_what_was_searched() {
    if !crate::support::root_available("container") {
        return;
    }
    for tool in ["leakd-attach", "allocsnoop", "execsnoop", "syscount"] {
        let out = Command::new(bin(tool))
            .args(["--container", "leakd-no-such-container", "-d", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{tool}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no running container") && err.contains("/proc/*/cgroup"),
            "{tool}: {err}"
        );
        crate::support::assert_usage_errors(
            tool,
            &[
                (&["--container", "a", "--pod", "b"], "cannot be used with"),
                (&["--container", "a", "-p", "1"], "cannot be used with"),
                (&["--pod-uid", "u", "--cgroup", "/sys"], "cannot be used with"),
            ],
        );
        let out =
            Command::new(bin(tool)).args(["--pod", "nons/nopod", "-d", "1"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{tool}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no running pod is named nons/nopod"), "{tool}: {err}");
    }
}

/// `--cgroup` matches a directory's whole subtree, through whichever
/// cgroup2 mount point the path is under: here a second mount of the
/// hierarchy (where production nodes have it, /sys/fs/cgroup, is a tmpfs
/// of v1 controllers on this kind of host).
#[bpf_test]
fn cgroup_subtree_through_a_second_mount() {
    let mut cleanup = Cleanup::default();
    let mnt = std::env::temp_dir().join(tag("cg2"));
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    cleanup.add(&["rmdir", m]);
    run(&["mount", "-t", "cgroup2", "none", m]);
    cleanup.add(&["umount", m]);
    let parent = mnt.join(tag("parent"));
    let child = parent.join("child");
    std::fs::create_dir_all(&child).unwrap();
    cleanup.add(&["rmdir", parent.to_str().unwrap()]);
    cleanup.add(&["rmdir", child.to_str().unwrap()]);
    let script =
        format!("/bin/true outside; echo $$ > {}/cgroup.procs; /bin/true inside", child.display());
    let out = Command::new(bin("execsnoop"))
        .args(["--cgroup", parent.to_str().unwrap(), "--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    assert_eq!(execs[0]["argv"], serde_json::json!(["/bin/true", "inside"]));
    let child_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&child).unwrap());
    assert_eq!(execs[0]["cgroup_id"], child_id);
}

/// The tool in a cgroup namespace of its own (as in a container with a
/// private cgroup namespace): other containers' cgroups read `/..`-relative
/// in /proc/PID/cgroup and the cgroup2 mount's root is `/..`; --container
/// still finds its container, and its leak.
#[bpf_test]
fn from_a_private_cgroup_namespace() {
    if !runtime("podman") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let img = image("podman", false, "cgns", &mut cleanup);
    let name = tag("cgns");
    cleanup.add(&["podman", "rm", "-f", "-t", "0", &name]);
    let mut c = podman_run(&name, &img, STEADY);
    let cg = crate::support::TestCgroup::new("cgns");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --cgroup {} -v --container {name} -d 60",
        cg.0,
        bin("leakd-attach").display()
    );
    let mut tool = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if the test fails first: its cgroup can then be removed.
    let _kill = KillPid(tool.id());
    let mut err = BufReader::new(tool.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "ended before attaching: {log}");
        log.push_str(&line);
        if line.contains("attached") {
            break;
        }
    }
    crate::support::discard(err);
    // What the tool sees of the container's cgroup.
    let seen = run(&[
        "nsenter",
        "--cgroup",
        "-t",
        &tool.id().to_string(),
        "cat",
        &format!("/proc/{}/cgroup", c.pid),
    ]);
    assert!(seen.lines().any(|l| l.starts_with("0::/../")), "{seen}");
    signal(c.pid, libc::SIGUSR1);
    assert_eq!(c.summary()["leaked_count"], 10);
    interrupt(&tool);
    let (code, lines, _) = wait_output(tool);
    assert_eq!(code, Some(3), "{lines:?}");
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 10, "{lines:?}");
    assert_eq!(r["container"]["name"], name.as_str(), "{r}");
    assert_eq!(stacks.len(), 1, "{lines:?}");
    drop(cg);
}

/// SIGKILL to a process when dropped (a test that failed before it ended).
struct KillPid(u32);

impl Drop for KillPid {
    fn drop(&mut self) {
        if crate::support::is_root() && std::path::Path::new(&format!("/proc/{}", self.0)).exists()
        {
            signal(self.0, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A C++ program in a container: its runtime's operators are probed
/// (through the container's root), so its five `new char[4096]` are
/// reported as new[].
#[bpf_test]
fn podman_cxx_operators() {
    if !runtime("podman") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let dir = std::env::temp_dir().join(tag("rootfs-cxx"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    cleanup.add(&["rm", "-rf", dir.to_str().unwrap()]);
    let src = dir.join("leaker.cc");
    std::fs::write(
        &src,
        r#"#include <csignal>
#include <cstdio>
#include <unistd.h>
int main() {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s, nullptr);
    fprintf(stderr, "{\"type\":\"leaker_ready\"}\n");
    int sig;
    sigwait(&s, &sig);
    for (int i = 0; i < 5; i++) {
        volatile char *p = new char[4096];
        p[0] = 1;
    }
    fprintf(stderr, "{\"type\":\"leaker_summary\",\"leaked_count\":5}\n");
    for (;;) pause();
}
"#,
    )
    .unwrap();
    let exe = dir.join("leaker");
    run(&["g++", "-O0", "-o", exe.to_str().unwrap(), src.to_str().unwrap()]);
    std::fs::remove_file(&src).unwrap();
    for line in run(&["ldd", exe.to_str().unwrap()]).lines() {
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else { continue };
        let to = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(path, &to).unwrap();
    }
    let img = format!("localhost/{}:1", tag("img-cxx"));
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = tar.stdout.take().unwrap();
    let out = Command::new("podman").args(["import", "-", &img]).stdin(stdin).output().unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cleanup.add(&["podman", "rmi", "-f", &img]);
    let name = tag("cxx");
    cleanup.add(&["podman", "rm", "-f", "-t", "0", &name]);
    let mut c = podman_run(&name, &img, &["/leaker"]);
    let (snoop, err) = spawn_attached(
        "allocsnoop",
        &["--container", &name, "--min-size", "4096", "--max-size", "4096", "-d", "60"],
    );
    crate::support::discard(err);
    signal(c.pid, libc::SIGUSR1);
    assert_eq!(c.summary()["leaked_count"], 5);
    interrupt(&snoop);
    let (code, lines, _) = wait_output(snoop);
    assert_eq!(code, Some(0), "{lines:?}");
    let news: Vec<&Value> =
        of_type(&lines, "alloc").into_iter().filter(|a| a["op"] == "new[]").collect();
    assert_eq!(news.len(), 5, "{lines:?}");
    for a in news {
        assert_eq!(a["size_bytes"], 4096, "{a}");
        assert_eq!(a["container"]["name"], name.as_str(), "{a}");
    }
}

/// Issue 22: without -p, the allocation tracers probed only the host's
/// libc, so a system-wide run missed a container whose image brings its
/// own. Every allocator file mapped at attach is probed now.
#[bpf_test]
fn system_wide_allocsnoop_sees_a_container_with_its_own_libc() {
    if !runtime("podman") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let img = image("podman", false, "syswide", &mut cleanup);
    let name = tag("syswide");
    cleanup.add(&["podman", "rm", "-f", "-t", "0", &name]);
    let mut c = podman_run(&name, &img, STEADY);
    let (snoop, err, log) = crate::support::spawn_attached_with_log(
        "allocsnoop",
        &["--op", "malloc", "--min-size", "4096", "--max-size", "4096", "-d", "60"],
    );
    crate::support::discard(err);
    signal(c.pid, libc::SIGUSR1);
    assert_eq!(c.summary()["leaked_count"], 10);
    interrupt(&snoop);
    let (code, lines, _) = wait_output(snoop);
    assert_eq!(code, Some(0), "{lines:?}");
    let mine: Vec<_> = of_type(&lines, "alloc").into_iter().filter(|a| a["pid"] == c.pid).collect();
    let lost = of_type(&lines, "lost");
    assert_eq!(mine.len(), 10, "{} lines, lost {lost:?}; {log}", lines.len());
    assert!(mine.iter().all(|a| a["op"] == "malloc" && a["size_bytes"] == 4096), "{mine:?}");
}
