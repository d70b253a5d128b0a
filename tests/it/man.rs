//! The committed man pages must match what the clap definitions generate.

#[test]
fn man_pages_are_up_to_date() {
    let mut stale = Vec::new();
    for (name, cmd) in xtask::tools() {
        let want = xtask::render(name, cmd).expect("render man page");
        let path = xtask::page_path(name);
        let have = std::fs::read(&path).unwrap_or_default();
        if have != want {
            stale.push(path.display().to_string());
        }
    }
    assert!(stale.is_empty(), "stale man pages (run `cargo xtask man`): {stale:?}");
}

#[test]
fn every_tool_documents_its_output() {
    for (name, cmd) in xtask::tools() {
        let page = String::from_utf8(xtask::render(name, cmd).unwrap()).unwrap();
        assert!(page.contains(".SH NAME"), "{name}");
        for section in [".SH OUTPUT", ".SH EXAMPLES", ".SH EXIT STATUS"] {
            assert!(page.contains(section), "{name} lacks {section}");
        }
    }
    assert_eq!(xtask::tools().len(), 6, "the six tools");
}
