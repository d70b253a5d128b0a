//! leakd-report end to end: the leaker's known leaks through leakd-attach
//! and symres come out with exact bytes per function in pprof (read back by
//! go tool pprof), folded stacks, text, SVG and HTML (parsed as XML, and
//! drawn by a headless chromium); text for every tool's lines; malformed
//! lines, empty input, incremental output, and a 100 MB input in bounded
//! memory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{self, bin, in_ci, TempDir, LEAKER};
use assert_cmd::Command as Cmd;
use leakd_test_macros::bpf_test;

/// What the leaker's "mixed" scenario leaks: one block per site.
const MIXED: [(&str, u64); 11] = [
    ("mixed_malloc", 40),
    ("mixed_calloc", 300),
    ("mixed_realloc_grow", 200),
    ("mixed_realloc_shrink", 50),
    ("mixed_realloc_null", 72),
    ("mixed_reallocarray", 168),
    ("mixed_posix_memalign", 640),
    ("mixed_aligned_alloc", 1280),
    ("mixed_memalign", 2560),
    ("mixed_valloc", 4000),
    ("mixed_pvalloc", 5000),
];

/// Whether an external program the test needs is installed; in CI a
/// missing one is a failure (scripts/setup installs it), elsewhere a skip.
fn have(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(!in_ci(), "{program} is missing in CI (scripts/setup installs {package})");
        eprintln!(
            "note: skipping test: {program} not installed (scripts/setup installs {package})"
        );
    }
    found
}

/// leakd-attach -- leaker mixed | symres, once for all tests of the run.
/// The leaker lingers after leaking: frames are placed in their modules
/// while the process is alive.
fn mixed_lines() -> &'static [u8] {
    static LINES: OnceLock<Vec<u8>> = OnceLock::new();
    LINES.get_or_init(|| {
        let attach = Cmd::cargo_bin("leakd-attach")
            .unwrap()
            .args(["--top", "100", "--", LEAKER, "mixed", "--linger", "0.3"])
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        assert_eq!(attach.status.code(), Some(3), "leaks found: {attach:?}");
        let sym = Cmd::cargo_bin("symres")
            .unwrap()
            .write_stdin(attach.stdout)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        assert!(sym.status.success(), "symres: {sym:?}");
        sym.stdout
    })
}

fn report(args: &[&str], input: impl Into<Vec<u8>>) -> Output {
    Cmd::cargo_bin("leakd-report")
        .unwrap()
        .env("TZ", "UTC")
        .args(args)
        .write_stdin(input.into())
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8(o.to_vec()).expect("UTF-8 output")
}

/// Bytes by leaf function of folded lines (`a;b;leaf BYTES`).
fn folded_leaves(folded: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in folded.lines() {
        let (stack, n) = l.rsplit_once(' ').unwrap_or_else(|| panic!("folded line: {l}"));
        let leaf = stack.rsplit(';').next().unwrap().to_string();
        *m.entry(leaf).or_default() += n.parse::<u64>().unwrap();
    }
    m
}

fn mixed_expected() -> BTreeMap<String, u64> {
    MIXED.iter().map(|(f, b)| (f.to_string(), *b)).collect()
}

#[bpf_test]
fn pprof_of_the_leaker_has_exact_bytes_per_function_in_go_tool_pprof() {
    let Some(go) = have("go", "golang-go") else { return };
    let dir = TempDir::new("pprof");
    let prof = dir.path("mixed.pb.gz");
    let out = report(&["-q", "--pprof", prof.to_str().unwrap()], mixed_lines());
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "-q prints nothing");
    let top = Command::new(go)
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space", "-unit=B"])
        .args(["-nodefraction=0", "-symbolize=none"])
        .arg(&prof)
        .env("HOME", &dir.0)
        .env("PPROF_TMPDIR", &dir.0)
        .output()
        .unwrap();
    let stdout = text(&top.stdout);
    assert!(top.status.success(), "go tool pprof: {top:?}");
    assert!(stdout.contains("Type: inuse_space"), "{stdout}");
    // "      5000B 34.94% 34.94%      5000B 34.94%  mixed_pvalloc"
    let mut flat = BTreeMap::new();
    for l in stdout.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() == 6 && cols[0].ends_with('B') && cols[5].starts_with("mixed_") {
            flat.insert(cols[5].to_string(), cols[0].trim_end_matches('B').parse::<u64>().unwrap());
        }
    }
    assert_eq!(flat, mixed_expected(), "{stdout}");
    let total: u64 = MIXED.iter().map(|m| m.1).sum();
    assert!(stdout.contains(&format!("of {total}B total")), "{stdout}");
    // Objects: one block per site.
    let top = Command::new(have("go", "golang-go").unwrap())
        .args(["tool", "pprof", "-top", "-sample_index=inuse_objects", "-nodefraction=0"])
        .args(["-symbolize=none"])
        .arg(&prof)
        .env("HOME", &dir.0)
        .output()
        .unwrap();
    let stdout = text(&top.stdout);
    for (f, _) in MIXED {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().next() == Some("1")
                && l.trim_end().ends_with(&format!(" {f}"))),
            "{f} has 1 object: {stdout}"
        );
    }
}

#[bpf_test]
fn folded_stacks_of_the_leaker_carry_exact_bytes() {
    let out = report(&["--folded"], mixed_lines());
    assert!(out.status.success(), "{out:?}");
    let folded = text(&out.stdout);
    assert_eq!(folded_leaves(&folded), mixed_expected(), "{folded}");
    for l in folded.lines() {
        assert!(l.contains("main;run_mixed;mixed_"), "caller chain in {l}");
    }
}

#[bpf_test]
fn text_report_of_the_leaker_names_functions_and_bytes() {
    let out = report(&[], mixed_lines());
    assert!(out.status.success(), "{out:?}");
    let t = text(&out.stdout);
    assert!(
        t.contains(" 14310 bytes (14.0 KiB) in 11 allocations outstanding from 11 stacks"),
        "{t}"
    );
    assert!(t.contains(", final"), "{t}");
    let lines: Vec<&str> = t.lines().collect();
    for (f, b) in MIXED {
        let i = lines
            .iter()
            .position(|l| *l == format!("\t{b} bytes in 1 allocations from stack"))
            .unwrap_or_else(|| panic!("{b} bytes stack in {t}"));
        let frame = lines[i + 1];
        assert!(frame.starts_with(&format!("\t\t{f}+0x")), "{frame}");
        assert!(frame.contains("leaker.c:") && frame.ends_with(" [leaker]"), "{frame}");
        assert!(lines[i + 2].starts_with("\t\trun_mixed+0x"), "{}", lines[i + 2]);
    }
}

/// Parse as XML (the SVG, and the HTML page which is written as XHTML).
fn xml_texts(doc: &str) -> String {
    let parsed = roxmltree::Document::parse_with_options(
        doc,
        roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
    )
    .unwrap_or_else(|e| panic!("not well-formed XML: {e}"));
    parsed.descendants().filter_map(|n| n.text()).collect::<Vec<_>>().join("\n")
}

#[bpf_test]
fn svg_and_html_of_the_leaker_are_well_formed_and_name_the_functions() {
    let dir = TempDir::new("svg");
    let (svg, html) = (dir.path("f.svg"), dir.path("f.html"));
    let out = report(
        &["-q", "--svg", svg.to_str().unwrap(), "--html", html.to_str().unwrap()],
        mixed_lines(),
    );
    assert!(out.status.success(), "{out:?}");
    let svg = std::fs::read_to_string(svg).unwrap();
    let texts = xml_texts(&svg);
    assert!(svg.starts_with("<?xml") && svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    for (f, b) in MIXED {
        assert!(texts.contains(&format!("{f}: {b} bytes (")), "tooltip of {f} in {svg}");
    }
    assert!(texts.contains("run_mixed: 14310 bytes (100.00%)"), "{texts}");
    let html = std::fs::read_to_string(html).unwrap();
    let texts = xml_texts(&html);
    for (f, _) in MIXED {
        assert!(texts.contains(&format!("\"{f}\"")), "{f} in the page's data");
    }
    for external in ["http://", "https://", "//cdn", "src=", "href="] {
        let hits: Vec<&str> = html
            .lines()
            .filter(|l| {
                l.contains(external) && !l.contains("xmlns=") && !l.contains("w3.org/2000/svg")
            })
            .collect();
        assert!(hits.is_empty(), "the page must need no network: {hits:?}");
    }
}

/// Chromium's arguments for a headless run that reaches no network.
fn chromium(dir: &TempDir) -> Option<Command> {
    let exe = have("chromium", "chromium")?;
    let mut c = Command::new(exe);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", dir.path("profile").display()))
    .env("HOME", &dir.0);
    Some(c)
}

/// The DOM chromium renders for a page.
fn dump_dom(dir: &TempDir, page: &Path) -> Option<String> {
    let mut c = chromium(dir)?;
    let child = c
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chromium");
    // A browser that hangs is killed after two minutes, which fails the test.
    let pid = child.id();
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(120))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            support::signal(pid, libc::SIGKILL);
        }
    });
    let out = child.wait_with_output().expect("waiting for chromium");
    let _ = done.send(());
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = text(&out.stdout);
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page's script did not finish: {}\n{}",
        dom,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(dom)
}

/// The frames chromium drew: (name, bytes, growing) of each `div.frame`.
fn drawn_frames(dom: &str) -> Vec<(String, u64, bool)> {
    let re = regex::Regex::new(
        r#"<div class="frame( growing)?( dim)?" data-bytes="(\d+)"[^>]*>([^<]*)</div>"#,
    )
    .unwrap();
    re.captures_iter(dom)
        .map(|c| (c[4].to_string(), c[3].parse().unwrap(), c.get(1).is_some()))
        .collect()
}

#[bpf_test]
fn html_of_the_leaker_is_drawn_by_a_headless_browser() {
    let dir = TempDir::new("browser");
    let page = dir.path("leak.html");
    let out = report(&["-q", "--html", page.to_str().unwrap()], mixed_lines());
    assert!(out.status.success(), "{out:?}");
    let Some(dom) = dump_dom(&dir, &page) else { return };
    let frames = drawn_frames(&dom);
    for (f, b) in MIXED {
        assert!(
            frames.iter().any(|(n, bytes, _)| n == f && *bytes == b),
            "frame {f} of {b} bytes drawn: {frames:?}"
        );
    }
    assert!(frames.iter().any(|(n, b, _)| n == "all" && *b == 14310), "{frames:?}");
}

/// Reports of a stack that grows and one that does not, as leakd-attach
/// -i writes them.
fn growth_input(reports: u64) -> String {
    let mut s = String::new();
    for i in 1..=reports {
        s.push_str(&format!(
            "{{\"type\":\"report\",\"ts_ns\":{},\"pid\":42,\"final\":{},\"outstanding_bytes\":{},\
             \"outstanding_count\":{},\"stacks\":2,\"allocs\":{},\"frees\":0}}\n",
            1_700_000_000_000_000_000u64 + i * 1_000_000_000,
            i == reports,
            1000 * i + 500,
            i + 1,
            i + 1
        ));
        s.push_str(&format!(
            "{{\"type\":\"stack\",\"pid\":42,\"outstanding_bytes\":{},\"outstanding_count\":{i},\
             \"growth_bytes_per_s\":1000.0,\"growing\":{},\"stack\":[\
             {{\"addr\":\"0x1010\",\"module\":\"/srv/app\",\"offset\":\"0x10\",\"sym\":\"grow_cache\",\"sym_offset\":\"0x4\",\"file\":\"app.c\",\"line\":12}},\
             {{\"addr\":\"0x1090\",\"module\":\"/srv/app\",\"offset\":\"0x90\",\"sym\":\"main\",\"sym_offset\":\"0x20\",\"file\":\"app.c\",\"line\":40}}]}}\n",
            1000 * i,
            i >= 3
        ));
        s.push_str(
            "{\"type\":\"stack\",\"pid\":42,\"outstanding_bytes\":500,\"outstanding_count\":1,\
             \"growth_bytes_per_s\":0.0,\"growing\":false,\"stack\":[\
             {\"addr\":\"0x1050\",\"module\":\"/srv/app\",\"offset\":\"0x50\",\"reason\":\"no_symbols\"},\
             {\"addr\":\"0x1090\",\"module\":\"/srv/app\",\"offset\":\"0x90\",\"sym\":\"main\",\"sym_offset\":\"0x20\",\"file\":\"app.c\",\"line\":40}]}\n",
        );
    }
    s
}

#[test]
fn html_chart_of_growth_is_drawn_with_the_growing_stack_highlighted() {
    let dir = TempDir::new("chart");
    let page = dir.path("growth.html");
    let out = report(&["-q", "--html", page.to_str().unwrap()], growth_input(5));
    assert!(out.status.success(), "{out:?}");
    xml_texts(&std::fs::read_to_string(&page).unwrap());
    let Some(dom) = dump_dom(&dir, &page) else { return };
    let frames = drawn_frames(&dom);
    assert!(frames.contains(&("grow_cache".into(), 5000, true)), "{frames:?}");
    assert!(frames.contains(&("[app+0x50]".into(), 500, false)), "{frames:?}");
    assert!(frames.contains(&("main".into(), 5500, true)), "{frames:?}");
    // One polyline per series (total, grow_cache, the unresolved one), a
    // point per report each.
    let re = regex::Regex::new(
        r#"<polyline class="(series[^"]*)" points="([^"]*)"[^>]*data-label="([^"]*)""#,
    )
    .unwrap();
    let series: Vec<(String, usize, String)> = re
        .captures_iter(&dom)
        .map(|c| (c[1].to_string(), c[2].split(' ').count(), c[3].to_string()))
        .collect();
    assert_eq!(
        series,
        vec![
            ("series".into(), 5, "total".into()),
            ("series growing".into(), 5, "grow_cache".into()),
            ("series".into(), 5, "[app+0x50]".into()),
        ]
    );
    assert!(dom.contains("5.4 KiB"), "legend with the last total: {dom}");
}

#[test]
fn text_leak_report_marks_growth_and_unresolved_frames() {
    let out = report(&[], growth_input(3));
    assert!(out.status.success(), "{out:?}");
    let t = text(&out.stdout);
    let last: Vec<&str> = t.lines().skip(14).collect();
    assert_eq!(
        last,
        [
            "[22:13:23] pid 42: 3500 bytes (3.4 KiB) in 4 allocations outstanding from 2 stacks \
             (tracked 4 allocs, 0 frees), final",
            "\t3000 bytes in 3 allocations from stack [GROWING +1000 B/s]",
            "\t\tgrow_cache+0x4 (app.c:12) [app]",
            "\t\tmain+0x20 (app.c:40) [app]",
            "\t500 bytes in 1 allocations from stack",
            "\t\t0x1050 [app+0x50] (no_symbols)",
            "\t\tmain+0x20 (app.c:40) [app]",
        ],
        "{t}"
    );
    assert!(t.contains("\t2000 bytes in 2 allocations from stack [+1000 B/s]\n"), "{t}");
    // --report picks another report for the pictures.
    let out = report(&["--folded", "--report", "2"], growth_input(3));
    assert_eq!(text(&out.stdout), "main;[app+0x50] 500\nmain;grow_cache 2000\n");
    let out = report(&["--folded", "--report", "4"], growth_input(3));
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "leakd-report: warning: --report 4: the input has 3 leak report(s); the files are empty\n"
    );
}

#[test]
fn text_of_raw_frames_without_symres() {
    let line = r#"{"type":"stack","outstanding_bytes":8,"outstanding_count":1,"stack":[{"addr":"0x55d0c5a2b486","module":"/usr/bin/leaker","offset":"0x2486","build_id":"6eee","return_address":true}]}"#;
    let out = report(&[], line);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "\t8 bytes in 1 allocations from stack\n\t\t0x55d0c5a2b486 [leaker+0x2486]\n"
    );
    let out = report(&["--folded"], line);
    assert_eq!(text(&out.stdout), "[leaker+0x2486] 8\n");
}

#[test]
fn text_of_execsnoop_lines_as_columns() {
    let input = concat!(
        r#"{"type":"exec","ts_ns":1796609123613755918,"pid":13684,"tid":13684,"ppid":13679,"uid":0,"comm":"sh","filename":"/usr/bin/sh","argv":["sh","-c","true; ls /x"],"argv_truncated":false,"ret":0,"cgroup_id":1}"#,
        "\n",
        r#"{"type":"exec","ts_ns":1796609123615822514,"pid":13688,"tid":13688,"ppid":13684,"uid":0,"comm":"sh","filename":"/nope","argv":["/nope","a"],"argv_truncated":true,"ret":-2,"cgroup_id":1}"#,
        "\n"
    );
    let out = report(&[], input);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "TIME     PCOMM            PID     PPID     RET ARGS\n\
         02:05:23 sh               13684   13679      0 sh -c 'true; ls /x'\n\
         02:05:23 sh               13688   13684     -2 /nope a ...\n"
    );
}

#[test]
fn text_of_syscount_lines_as_a_sorted_table() {
    let input = concat!(
        r#"{"type":"syscall","syscall":"read","nr":0,"count":8,"lat_ns_total":89596,"lat_ns_avg":11199}"#,
        "\n",
        r#"{"type":"syscall","syscall":"vfork","nr":58,"count":1,"lat_ns_total":8319501,"lat_ns_avg":8319501}"#,
        "\n",
        r#"{"type":"syscall","syscall":"close","nr":3,"count":28,"lat_ns_total":15186,"lat_ns_avg":542}"#,
        "\n",
        r#"{"type":"interval","seq":1,"ts_ns":1796609124209811664,"interval_ns":12092254,"count":37,"rows":3}"#,
        "\n",
        r#"{"type":"process","pid":7,"comm":"true","count":30}"#,
        "\n",
        r#"{"type":"process","pid":9,"comm":"make","count":31}"#,
        "\n"
    );
    let out = report(&[], input);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "[02:05:24] interval 1 (12.1 ms): 37 calls in 3 rows\n\
         SYSCALL      COUNT       TIME        AVG\n\
         vfork            1     8.3 ms     8.3 ms\n\
         read             8    89.6 us    11.2 us\n\
         close           28    15.2 us     542 ns\n\
         \n\
         SYSCALL      COUNT\n\
         9 make          31\n\
         7 true          30\n\
         \n"
    );
}

#[test]
fn text_of_allocsnoop_lines_one_each_and_their_profile() {
    let frame = r#"{"addr":"0x5616e95ca486","module":"/srv/leaker","offset":"0x2486","return_address":true,"sym":"leak_ten_nine_alloc","sym_offset":"0x9","file":"leaker.c","line":433}"#;
    let input = format!(
        "{}\n{}\n{}\n{}\n",
        format_args!(
            r#"{{"type":"alloc","op":"malloc","ts_ns":1796609120210813431,"pid":5,"tid":6,"comm":"leaker","size_bytes":8,"addr":"0x10","stack":[{frame}]}}"#
        ),
        format_args!(
            r#"{{"type":"alloc","op":"realloc","ts_ns":1796609120210813431,"pid":5,"tid":6,"comm":"leaker","size_bytes":24,"addr":"0x30","old_addr":"0x10","stack":[{frame}]}}"#
        ),
        r#"{"type":"alloc","op":"free","ts_ns":1796609120210900000,"pid":5,"tid":6,"comm":"leaker","addr":"0x30"}"#,
        r#"{"type":"alloc","op":"malloc","ts_ns":1796609120210900000,"pid":5,"tid":6,"comm":"leaker","size_bytes":99,"addr":"0x0","failed":true}"#,
    );
    let out = report(&[], input.clone());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "02:05:20.210813 leaker 5/6 malloc 8 bytes -> 0x10 from leak_ten_nine_alloc+0x9 (leaker.c:433) [leaker]\n\
         02:05:20.210813 leaker 5/6 realloc 0x10 24 bytes -> 0x30 from leak_ten_nine_alloc+0x9 (leaker.c:433) [leaker]\n\
         02:05:20.210900 leaker 5/6 free 0x30\n\
         02:05:20.210900 leaker 5/6 malloc 99 bytes -> 0x0 FAILED\n"
    );
    // Allocated bytes per stack: the failed call and the free are not.
    let out = report(&["--folded"], input);
    assert_eq!(text(&out.stdout), "leak_ten_nine_alloc 32\n");
}

#[test]
fn malformed_lines_are_skipped_with_their_line_numbers() {
    let input = concat!(
        "{\"type\":\"report\",\"outstanding_bytes\":8}\n",
        "not json\n",
        "{\"type\":\"stack\",\"outstanding_bytes\":8,\"stack\":[{\"addr\":\"0x1\",\"sym\":\"f\"}]}\n",
        "[1,2]\n",
        "{\"type\":\"index\",\"module\":\"/x\"}\n",
        "\n",
        "{\"type\":\"stack\",\"outstanding_bytes\":\"zz\"}\n",
        "{\"type\":\"stack\",\"stack\":[]}\n",
        "{\"type\":\"stack\",\"outstanding_bytes\":4,\"stack\":[{\"addr\":\"0x2\",\"sym\":\"g\"}]}\n",
        "{\"type\":\"stack\",\"outstanding_bytes\"",
    );
    let out = report(&["--folded"], input);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout), "f 8\ng 4\n");
    let err = text(&out.stderr);
    let numbers: Vec<&str> = err
        .lines()
        .map(|l| {
            assert!(
                l.starts_with("leakd-report: warning: line ") && l.ends_with("; skipped"),
                "{l}"
            );
            l.split(' ').nth(3).unwrap().trim_end_matches(':')
        })
        .collect();
    assert_eq!(numbers, ["2", "4", "5", "7", "8", "10"], "{err}");
    assert!(err.contains("unknown line type \"index\""), "{err}");
}

#[test]
fn empty_input_gives_an_empty_report() {
    let dir = TempDir::new("empty");
    let (prof, svg, html) = (dir.path("e.pb.gz"), dir.path("e.svg"), dir.path("e.html"));
    let out = report(
        &[
            "--folded",
            "--pprof",
            prof.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(xml_texts(&std::fs::read_to_string(svg).unwrap()).contains("no samples"));
    xml_texts(&std::fs::read_to_string(html).unwrap());
    assert!(std::fs::metadata(&prof).unwrap().len() > 0);
    let out = report(&[], "");
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}

#[test]
fn each_report_is_printed_as_it_arrives() {
    let mut child = Command::new(bin("leakd-report"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let _guard = support::KillOnDrop(child);
    let input = growth_input(2);
    let mut lines = input.lines();
    // The first report and its stacks, with stdin still open.
    for _ in 0..3 {
        writeln!(stdin, "{}", lines.next().unwrap()).unwrap();
    }
    stdin.flush().unwrap();
    let mut seen = String::new();
    while !seen.contains("[app+0x50]") {
        let mut l = String::new();
        assert!(stdout.read_line(&mut l).unwrap() > 0, "output ended early: {seen}");
        seen.push_str(&l);
    }
    assert!(seen.contains("\t1000 bytes in 1 allocations from stack"), "{seen}");
    drop(stdin);
}

/// The peak resident set (VmHWM) of a running process, in KiB.
fn vm_hwm_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_100_mb_input_is_read_in_memory_bounded_by_distinct_stacks() {
    // 20 distinct stacks, reported again and again with growing bytes, the
    // way a long leakd-attach -i run looks: 100 MB of lines.
    let mut child = Command::new(bin("leakd-report"))
        .args(["-q", "--folded", "--html", "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let writer = std::thread::spawn(move || {
        let mut written = 0usize;
        let mut reports = 0u64;
        let mut w = std::io::BufWriter::new(&mut stdin);
        while written < 100 << 20 {
            reports += 1;
            let mut chunk = format!(
                "{{\"type\":\"report\",\"ts_ns\":{},\"outstanding_bytes\":1,\"stacks\":20}}\n",
                reports * 1_000_000_000
            );
            for s in 0..20u64 {
                chunk.push_str(&format!(
                    "{{\"type\":\"stack\",\"outstanding_bytes\":{},\"outstanding_count\":{reports},\"growing\":true,\"stack\":[",
                    reports * (s + 1)
                ));
                for depth in 0..12u64 {
                    chunk.push_str(&format!(
                        "{{\"addr\":\"0x{:x}\",\"module\":\"/usr/lib/libbig.so\",\"offset\":\"0x{:x}\",\"build_id\":\"0123456789abcdef0123456789abcdef01234567\",\"return_address\":true,\"sym\":\"fn_{s}_{depth}\",\"sym_offset\":\"0x9\",\"file\":\"/src/big/module_{s}.c\",\"line\":{depth}}}{}",
                        0x7f00_0000_0000 + s * 0x1000 + depth,
                        s * 0x1000 + depth,
                        if depth == 11 { "" } else { "," }
                    ));
                }
                chunk.push_str("]}\n");
            }
            w.write_all(chunk.as_bytes()).unwrap();
            written += chunk.len();
        }
        w.flush().unwrap();
        // The peak so far, read while the input is still open: after exit,
        // wait4's ru_maxrss would also count the test process's pages the
        // child had before its exec, which other tests running in this
        // process inflate.
        let hwm = vm_hwm_kib(pid);
        (reports, hwm)
    });
    let mut folded = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut folded).unwrap();
    let (reports, rss_kib) = writer.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(0), "{stderr}");
    // More reports than the chart keeps points: its downsampling is exercised.
    assert!(reports > 2 * 512, "{reports} reports");
    let leaves = folded_leaves(&folded);
    assert_eq!(leaves.len(), 20, "{folded}");
    for s in 0..20u64 {
        assert_eq!(leaves[&format!("fn_{s}_0")], reports * (s + 1), "last report's bytes");
    }
    // Holding the lines would take over 100 MiB; the stacks take well under 1.
    assert!(rss_kib < 48 * 1024, "peak RSS {rss_kib} KiB for 100 MB of input");
    eprintln!("peak RSS {rss_kib} KiB for 100 MB of input ({reports} reports)");
}

#[test]
fn usage_errors() {
    support::assert_usage_errors(
        "leakd-report",
        &[(&["--report", "0"], "--report"), (&["--bogus"], "--bogus")],
    );
}

/// go tool pprof run on a profile; its stdout.
fn go_pprof(dir: &TempDir, go: &Path, args: &[&str], prof: &Path) -> String {
    let out = Command::new(go)
        .args(["tool", "pprof", "-symbolize=none"])
        .args(args)
        .arg(prof)
        .env("HOME", &dir.0)
        .env("PPROF_TMPDIR", &dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "go tool pprof {args:?}: {out:?}");
    text(&out.stdout)
}

#[test]
fn pprof_keeps_inlined_functions_unresolved_frames_and_the_growing_label() {
    let Some(go) = have("go", "golang-go") else { return };
    let dir = TempDir::new("inlined");
    let prof = dir.path("inl.pb.gz");
    let input = concat!(
        r#"{"type":"report","ts_ns":1700000000000000000,"outstanding_bytes":124}"#,
        "\n",
        r#"{"type":"stack","outstanding_bytes":100,"outstanding_count":2,"growing":true,"stack":[{"addr":"0x1010","module":"/srv/app","offset":"0x10","build_id":"abcd","sym":"outer","sym_offset":"0x4","file":"app.c","line":12,"inlined":[{"sym":"inner","file":"inner.h","line":3}]},{"addr":"0x1090","module":"/srv/app","offset":"0x90","sym":"main","file":"app.c","line":40}]}"#,
        "\n",
        r#"{"type":"stack","outstanding_bytes":24,"outstanding_count":1,"stack":[{"addr":"0x7f0000001050","module":"/lib/libfoo.so","offset":"0x50","reason":"no_symbols"},{"addr":"0x1090","module":"/srv/app","offset":"0x90","sym":"main","file":"app.c","line":40}]}"#,
        "\n"
    );
    let out = report(&["-q", "--pprof", prof.to_str().unwrap()], input);
    assert!(out.status.success(), "{out:?}");
    let traces = go_pprof(&dir, &go, &["-traces"], &prof);
    let traces: Vec<&str> = traces.lines().skip_while(|l| !l.starts_with("---")).collect();
    assert_eq!(
        traces,
        [
            "-----------+-------------------------------------------------------",
            "   growing:  true",
            "      100B   inner (inline)",
            "             outer",
            "             main",
            "-----------+-------------------------------------------------------",
            "   growing:  false",
            "       24B   [libfoo.so]",
            "             main",
            "-----------+-------------------------------------------------------",
        ]
    );
    let top = go_pprof(&dir, &go, &["-top", "-unit=B", "-nodefraction=0"], &prof);
    assert!(top.contains("Build ID: abcd"), "{top}");
    assert!(top.contains("Type: inuse_space"), "the default sample type: {top}");
    let list = go_pprof(&dir, &go, &["-list", "outer", "-unit=B"], &prof);
    assert!(list.contains("app.c"), "{list}");
}

#[bpf_test]
fn allocsnoop_through_symres_gives_an_alloc_profile_and_one_line_per_call() {
    let snoop = Cmd::cargo_bin("allocsnoop")
        .unwrap()
        .args(["--stack", "--", LEAKER, "ten-nine", "--linger", "0.3"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(snoop.status.success(), "{snoop:?}");
    let sym = Cmd::cargo_bin("symres")
        .unwrap()
        .write_stdin(snoop.stdout)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(sym.status.success(), "{sym:?}");
    let out = report(&[], sym.stdout.clone());
    assert!(out.status.success(), "{out:?}");
    let t = text(&out.stdout);
    let mallocs = t
        .lines()
        .filter(|l| {
            l.contains(" malloc 8 bytes -> 0x") && l.contains(" from leak_ten_nine_alloc+0x")
        })
        .count();
    let frees = t
        .lines()
        .filter(|l| l.contains(" free 0x") && l.contains(" from ten_nine_free+0x"))
        .count();
    assert_eq!((mallocs, frees), (10, 9), "{t}");
    let out = report(&["--folded"], sym.stdout.clone());
    let leaves = folded_leaves(&text(&out.stdout));
    assert_eq!(leaves.get("leak_ten_nine_alloc"), Some(&80), "{leaves:?}");
    let Some(go) = have("go", "golang-go") else { return };
    let dir = TempDir::new("allocs");
    let prof = dir.path("allocs.pb.gz");
    let out = report(&["-q", "--pprof", prof.to_str().unwrap()], sym.stdout);
    assert!(out.status.success(), "{out:?}");
    for (index, unit, want) in [("alloc_space", "B", "80B"), ("alloc_objects", "minimum", "10")] {
        let top = go_pprof(
            &dir,
            &go,
            &[
                &format!("-sample_index={index}"),
                "-top",
                &format!("-unit={unit}"),
                "-nodefraction=0",
            ],
            &prof,
        );
        assert!(
            top.lines().any(|l| l.split_whitespace().next() == Some(want)
                && l.trim_end().ends_with(" leak_ten_nine_alloc")),
            "{index}: {top}"
        );
    }
}

#[bpf_test]
fn a_live_leakd_attach_pipeline_shows_each_report_as_it_arrives() {
    let (leaker, pid, err) = support::start_leaker(&[
        "steady",
        "--size",
        "16384",
        "--interval",
        "0.05",
        "--max",
        "100000000",
    ]);
    support::discard(err);
    // A long run: the reports must reach us while leakd-attach still runs.
    let (mut attach, attach_err) =
        support::spawn_attached("leakd-attach", &["-p", &pid.to_string(), "-i", "0.5", "-d", "60"]);
    support::discard(attach_err);
    let attach_out = attach.stdout.take().unwrap();
    let mut attach = support::KillOnDrop(attach);
    let mut symres =
        Command::new(bin("symres")).stdin(attach_out).stdout(Stdio::piped()).spawn().unwrap();
    let sym_out = symres.stdout.take().unwrap();
    let _symres = support::KillOnDrop(symres);
    let mut rep =
        Command::new(bin("leakd-report")).stdin(sym_out).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(rep.stdout.take().unwrap());
    let _rep = support::KillOnDrop(rep);
    // If nothing comes, leakd-attach is stopped after a minute and the
    // pipeline's end fails the read below.
    // (Dropping `_stop` at the end, or in a panic, disarms it.)
    let apid = attach.0.id();
    let (_stop, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(60))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            support::signal(apid, libc::SIGKILL);
        }
    });
    let mut seen = String::new();
    let mut reports = 0;
    while reports < 4 {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "the pipeline ended: {seen}");
        if l.starts_with('[') && l.contains(&format!("] pid {pid}: ")) {
            reports += 1;
            assert!(!l.contains(", final"), "a periodic report: {l}");
        }
        seen.push_str(&l);
    }
    // Still running: these four came while leakd-attach was tracing.
    assert!(attach.0.try_wait().unwrap().is_none(), "leakd-attach still runs");
    let frames: Vec<&str> = seen.lines().filter(|l| l.starts_with("\t\tsteady_leak+0x")).collect();
    assert!(frames.len() >= 3, "the leaking function in each report: {seen}");
    assert!(
        seen.lines()
            .any(|l| l.starts_with("\t") && l.contains(" bytes in ") && l.contains("KiB/s]")),
        "a growth rate: {seen}"
    );
    drop(leaker);
}

#[test]
fn pprof_opens_in_go_tool_pprof_web_ui() {
    let Some(go) = have("go", "golang-go") else { return };
    let dir = TempDir::new("http");
    let prof = dir.path("growth.pb.gz");
    let out = report(&["-q", "--pprof", prof.to_str().unwrap()], growth_input(5));
    assert!(out.status.success(), "{out:?}");
    // The pprof tool itself rather than `go tool pprof`, so that killing it
    // leaves no server behind.
    let tooldir = Command::new(go).args(["env", "GOTOOLDIR"]).output().unwrap();
    let pprof = PathBuf::from(text(&tooldir.stdout).trim()).join("pprof");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Command::new(pprof)
        .arg(format!("-http=127.0.0.1:{port}"))
        .args(["-no_browser", "-symbolize=none"])
        .arg(&prof)
        .env("HOME", &dir.0)
        .env("PPROF_TMPDIR", &dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = support::KillOnDrop(server);
    let mut body = String::new();
    for _ in 0..300 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            write!(s, "GET /ui/top HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            std::io::Read::read_to_string(&mut s, &mut body).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(body.starts_with("HTTP/1.0 200"), "pprof's web UI answered: {body:.300}");
    assert!(
        body.contains(r#"{"Name":"grow_cache","InlineLabel":"","Flat":5000,"Cum":5000"#),
        "{body}"
    );
    assert!(body.contains(r#""Name":"main","InlineLabel":"","Flat":0,"Cum":5500"#), "{body}");
}

#[test]
fn text_of_histograms_and_lost_events() {
    let input = concat!(
        r#"{"type":"hist","syscall":"read","nr":0,"count":5,"buckets":[{"lat_ns_min":1024,"lat_ns_max":2048,"count":4},{"lat_ns_min":140737488355328,"lat_ns_max":null,"count":1}]}"#,
        "\n",
        r#"{"type":"lost","reason":"ringbuf_full","count":3,"total":7}"#,
        "\n"
    );
    let out = report(&[], input);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "read latency, 5 calls:\n  {:>10} .. {:<10} {:>10} |{:<40}|\n  {:>10} .. {:<10} {:>10} |{:<40}|\n\
             WARNING: lost 3 events (ringbuf_full), 7 in all: totals are low\n",
            "1.0 us",
            "2.0 us",
            4,
            "*".repeat(40),
            "140737.49 s",
            "inf",
            1,
            "*".repeat(10),
        )
    );
}

#[test]
fn a_file_that_cannot_be_written_is_an_error_with_its_path() {
    // Said before any input is read: the input here would hang otherwise.
    let mut child = Command::new(bin("leakd-report"))
        .args(["--html", "/nonexistent-dir/x.html"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _open_stdin = child.stdin.take();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "ended by itself with an error: {out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.starts_with("leakd-report: error: creating /nonexistent-dir/x.html: "), "{err}");
}

#[test]
fn html_search_and_zoom_work_in_the_browser() {
    let dir = TempDir::new("zoom");
    let page = dir.path("z.html");
    let out = report(&["-q", "--html", page.to_str().unwrap()], growth_input(5));
    assert!(out.status.success(), "{out:?}");
    // The link form of a search and a zoom, run by the page's own script.
    let link = PathBuf::from(format!("{}#search=%5Egrow_&zoom=grow_cache", page.display()));
    let Some(dom) = dump_dom(&dir, &link) else { return };
    assert!(dom.contains(">matched 4.9 KiB (90.9%)<"), "{dom}");
    let re = regex::Regex::new(r#"<div class="frame([a-z ]*)" data-bytes="(\d+)"[^>]*style="left: ([0-9.]+)%; width: ([0-9.]+)%;[^>]*>([^<]*)</div>"#)
        .unwrap();
    let frames: Vec<(String, String, String, String)> = re
        .captures_iter(&dom)
        .map(|c| (c[5].to_string(), c[1].to_string(), c[3].to_string(), c[4].to_string()))
        .collect();
    // Zoomed into grow_cache: it fills the width, its callers are dimmed
    // (full width too), the sibling stack is not drawn; the search marks it.
    assert_eq!(
        frames,
        [
            ("all".into(), " growing dim".into(), "0".into(), "100".into()),
            ("main".into(), " growing dim".into(), "0".into(), "100".into()),
            ("grow_cache".into(), " growing match".into(), "0".into(), "100".into()),
        ],
        "{dom}"
    );
}

#[test]
fn the_screenshot_script_writes_a_png_of_a_page() {
    let dir = TempDir::new("shot");
    let page = dir.path("p.html");
    let out = report(&["-q", "--html", page.to_str().unwrap()], growth_input(3));
    assert!(out.status.success(), "{out:?}");
    if have("chromium", "chromium").is_none() {
        return;
    }
    let png = dir.path("p.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/report-screenshot");
    let out = Command::new(script)
        .arg(&page)
        .arg(&png)
        .arg("800x600")
        .env("HOME", &dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim_end(), png.to_str().unwrap());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    // IHDR: width and height as asked.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 800);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 600);
}

#[test]
fn text_of_a_mismatch_line_names_both_calls_and_stacks() {
    let input = concat!(
        r#"{"type":"mismatch","ts_ns":1,"pid":7,"tid":7,"comm":"m","addr":"0x10","size_bytes":24,"#,
        r#""alloc":{"op":"new[]","stack":[{"addr":"0x1","sym":"array_by_delete()","sym_offset":"0xe","file":"m.cc","line":8},{"addr":"0x2","sym":"main"}]},"#,
        r#""free":{"op":"delete","stack":[{"addr":"0x3","module":"/m","offset":"0x1221"}]}}"#,
        "\n"
    );
    let out = report(&[], input);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "MISMATCH: m/7: block 0x10 of 24 bytes made by new[] freed by delete\n\
         \tmade by new[] at:\n\t\tarray_by_delete()+0xe (m.cc:8)\n\t\tmain\n\
         \tfreed by delete at:\n\t\t0x3 [m+0x1221]\n"
    );
}

/// leakd-attach's exec line (the replaced image's blocks, counted as freed)
/// is said as such, not drawn as an execsnoop row with empty columns.
#[test]
fn text_of_leakd_attach_exec_line_says_what_ended() {
    let input = concat!(
        r#"{"type":"exec","ts_ns":1,"pid":7,"comm":"sh","freed_count":50,"freed_bytes":3200}"#,
        "\n",
        r#"{"type":"exec","ts_ns":1,"pid":8,"ppid":7,"comm":"true","ret":0,"argv":["true"]}"#,
        "\n"
    );
    let out = report(&[], input);
    assert!(out.status.success(), "{out:?}");
    let text = text(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].ends_with(
            "pid 7: exec (sh) ended 50 blocks, 3200 bytes (3.1 KiB), of the old image: \
             counted as freed"
        ),
        "{text}"
    );
    assert!(lines[1].starts_with("TIME "), "{text}");
    assert!(lines[2].contains(" true"), "{text}");
}
