//! syscount: not written yet; the binary exists so the workspace layout is final.

use leakd_common::{bail, Result};

pub fn command() -> clap::Command {
    clap::Command::new("syscount").version(env!("CARGO_PKG_VERSION")).about("syscount (not implemented yet)")
}

pub fn run(_matches: &clap::ArgMatches) -> Result<i32> {
    bail!("not implemented yet")
}
