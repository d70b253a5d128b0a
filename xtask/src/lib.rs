//! Man pages are generated from the same clap definitions the binaries parse
//! with, so an option can't exist in one and not the other. The parts clap
//! can't know (what the JSON lines mean, worked examples) are hand-written in
//! man/sections/<tool>.roff and appended. `cargo xtask man` rewrites man/;
//! tests/man.rs fails when the committed pages are stale.

use std::path::{Path, PathBuf};

/// Every tool and its clap definition.
pub fn tools() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("execsnoop", execsnoop::command()),
        ("syscount", syscount::command()),
        ("allocsnoop", allocsnoop::command()),
        ("leakd-attach", leakd_attach::command()),
        ("symres", symres::command()),
        ("leakd-report", leakd_report::command()),
    ]
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Render the page for `name` from its command and hand-written sections.
pub fn render(name: &str, cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.name(name.to_owned().leak() as &'static str))
        .section("8")
        .manual("leakd");
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    let extra = workspace_root().join("man/sections").join(format!("{name}.roff"));
    match std::fs::read(&extra) {
        Ok(text) => buf.extend_from_slice(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    man.render_version_section(&mut buf)?;
    Ok(buf)
}

/// Path of the committed page.
pub fn page_path(name: &str) -> PathBuf {
    workspace_root().join("man").join(format!("{name}.8"))
}
