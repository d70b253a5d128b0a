use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("man") => {
            for (name, cmd) in xtask::tools() {
                let page = match xtask::render(name, cmd) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("xtask: error: rendering {name}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let path = xtask::page_path(name);
                if let Err(e) = std::fs::write(&path, page) {
                    eprintln!("xtask: error: writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: cargo xtask man    regenerate man/*.8 from the clap definitions");
            ExitCode::from(2)
        }
    }
}
