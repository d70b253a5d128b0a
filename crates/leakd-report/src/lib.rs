//! leakd-report: the end of the pipe, where JSON lines become something a
//! person reads or a profiler opens.
//!
//! The other tools print JSON lines because they compose; people want BCC's
//! memleak text, a flame graph, or a profile their tools already open. This
//! tool reads any leakd tool's lines (raw or after symres) and renders them,
//! as text while they stream in, and as files (pprof, SVG, HTML) at the end.
//! Its memory holds distinct frames and stacks, never lines, so it can sit
//! behind a `leakd-attach -i 1` for a week.

mod flame;
mod html;
mod input;
mod model;
mod pprof;
mod text;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use leakd_common::lines::{read_line_bounded, Bounded, MAX_LINE_BYTES};
use leakd_common::{Context, Result};

pub use flame::xml_escape;

const EXAMPLES: &str = "\
Examples:
  leakd-attach -p 1234 -i 5 | symres | leakd-report
  leakd-attach -p 1234 -d 60 | symres | leakd-report --html leak.html
  leakd-attach -- ./app | symres | leakd-report --pprof leak.pb.gz && go tool pprof -top leak.pb.gz
  allocsnoop --stack -p 1234 -d 10 | symres | leakd-report --folded > allocs.folded";

#[derive(Parser, Debug)]
#[command(
    name = "leakd-report",
    version,
    about = "Render leakd JSON lines as text, folded stacks, a flame graph, pprof or HTML",
    long_about = "Read the JSON lines of any leakd tool (leakd-attach, allocsnoop, execsnoop, \
syscount; raw or after symres) on standard input and render them for people. By default each \
line is printed as text as it arrives: leak reports like BCC's memleak, execs as columns, \
syscount tables, one line per allocation. --pprof, --svg and --html write files at the end of \
the input from the last leak report (or --report N), or from all allocsnoop events when there \
was no leak report.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Write a gzipped pprof profile (profile.proto) to FILE: inuse_objects and inuse_space
    /// of a leak report, or alloc_objects and alloc_space of allocsnoop events.
    #[arg(long, value_name = "FILE")]
    pprof: Option<PathBuf>,

    /// Print folded stacks (`main;f;leak_site BYTES`, the input of flamegraph.pl, inferno and
    /// speedscope) on standard output instead of the text.
    #[arg(long)]
    folded: bool,

    /// Write a flame graph of outstanding (or allocated) bytes by stack to FILE, as SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,

    /// Write one self-contained HTML page to FILE: the flame graph (click to zoom, search)
    /// and a chart of outstanding bytes over time for the top stacks.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,

    /// Use the Nth leak report (1 is the first) for --pprof, --folded, --svg and --html,
    /// instead of the last.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    report: Option<u64>,

    /// Title of the flame graph and the HTML page.
    #[arg(long, value_name = "TEXT", default_value = "leakd report")]
    title: String,

    /// Print no text on standard output (only write the files asked for).
    #[arg(short, long)]
    quiet: bool,
}

pub fn command() -> clap::Command {
    Cli::command()
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 << 10, stdout.lock());
    let stats = render(&cli, BufReader::with_capacity(256 << 10, stdin.lock()), &mut out)?;
    out.flush()?;
    Ok(if stats.skipped > 0 { leakd_common::EXIT_ERROR } else { leakd_common::EXIT_OK })
}

struct Stats {
    skipped: u64,
}

fn warn(lineno: u64, what: &str) {
    eprintln!("leakd-report: warning: line {lineno}: {what}; skipped");
}

/// Types of line that are understood, and what each needs to mean anything.
fn check(l: &input::Line) -> std::result::Result<(), String> {
    let need = |ok: bool, field: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("a {:?} line without {field}", l.kind))
        }
    };
    match l.kind.as_ref() {
        "report" => need(l.outstanding_bytes.is_some(), "\"outstanding_bytes\""),
        "stack" => need(l.outstanding_bytes.is_some(), "\"outstanding_bytes\""),
        "alloc" => need(l.op.is_some(), "\"op\""),
        "exec" => need(l.pid.is_some(), "\"pid\""),
        "mismatch" => need(l.alloc.is_some() && l.free.is_some(), "\"alloc\" and \"free\""),
        "syscall" | "process" | "process_syscall" => need(l.count.is_some(), "\"count\""),
        "interval" | "hist" | "lost" => Ok(()),
        other => Err(format!("unknown line type {other:?}")),
    }
}

fn render<R: Read>(cli: &Cli, mut input: BufReader<R>, out: &mut impl Write) -> Result<Stats> {
    // Files are created before the input is read: a path that cannot be
    // written fails now, not after a day of leakd-attach -i reports.
    let (pprof_file, svg_file, html_file) =
        (create(cli.pprof.as_deref())?, create(cli.svg.as_deref())?, create(cli.html.as_deref())?);
    let mut model = model::Model::new(cli.report);
    let mut text = text::Text::default();
    let show_text = !cli.quiet && !cli.folded;
    let mut buf = Vec::new();
    let mut lineno = 0u64;
    let mut stats = Stats { skipped: 0 };
    loop {
        match read_line_bounded(&mut input, &mut buf, MAX_LINE_BYTES)
            .context("reading standard input")?
        {
            Bounded::Eof => break,
            Bounded::Line => lineno += 1,
            Bounded::TooLong => {
                lineno += 1;
                warn(lineno, &format!("longer than {MAX_LINE_BYTES} bytes"));
                stats.skipped += 1;
                continue;
            }
        }
        let line = trim_eol(&buf);
        if !line.iter().all(u8::is_ascii_whitespace) {
            match std::str::from_utf8(line)
                .map_err(|e| format!("not UTF-8 ({e})"))
                .and_then(input::parse)
                .and_then(|l| check(&l).map(|()| l))
            {
                Ok(l) => {
                    if l.kind != "stack" {
                        // A stack line belongs to the report before it;
                        // anything else ends that report.
                        model.end_report();
                    }
                    model.add(&l);
                    if show_text {
                        text.line(out, &l)?;
                    }
                }
                Err(e) => {
                    warn(lineno, &e);
                    stats.skipped += 1;
                }
            }
        }
        // Flush whenever the next read could block, so a live pipeline
        // shows each report as it arrives.
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
    model.end_report();
    if let Some(n) = cli.report.filter(|&n| n > model.reports) {
        eprintln!(
            "leakd-report: warning: --report {n}: the input has {} leak report(s); the files \
             are empty",
            model.reports
        );
    }
    if show_text {
        text.finish(out)?;
    }
    if cli.folded {
        out.write_all(flame::folded(&model).as_bytes())?;
    }
    if let Some(f) = pprof_file {
        write_file(f, |w| pprof::write(&model, w))?;
    }
    if let Some(f) = svg_file {
        write_file(f, |w| w.write_all(flame::svg(&model, &cli.title).as_bytes()))?;
    }
    if let Some(f) = html_file {
        write_file(f, |w| w.write_all(html::page(&model, &cli.title).as_bytes()))?;
    }
    Ok(stats)
}

fn create(p: Option<&Path>) -> Result<Option<(&Path, File)>> {
    p.map(|p| Ok((p, File::create(p).with_context(|| format!("creating {}", p.display()))?)))
        .transpose()
}

fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn write_file(
    (path, file): (&Path, File),
    f: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<()> {
    let mut w = BufWriter::new(file);
    f(&mut w).and_then(|()| w.flush()).with_context(|| format!("writing {}", path.display()))
}
