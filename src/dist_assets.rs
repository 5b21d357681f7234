//! `fedgate generate-assets DIR` (a packaging hook, in no help text): the man pages and shell completions of the installed
//! command, made from the clap definitions the binary itself parses with, so they can never
//! drift from it. `deploy/build-deb.sh` runs it on the binary it packages.
//!
//! This is a hook in the binary rather than a `build.rs`: the command tree is defined in the binary and
//! its library (the `probe`, `policy`, `bench` … argument types), which a build script cannot
//! use without building the whole crate a second time; and a build script would run on every
//! build of every developer, while only packaging needs these files.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Writes `out/man/<command>.1` for the command and every visible subcommand (`fedgate.1`,
/// `fedgate-policy-check.1`, …) and `out/completions/` for bash (`fedgate.bash`), zsh
/// (`_fedgate`) and fish (`fedgate.fish`). Returns the files written.
pub fn write(mut cmd: clap::Command, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
    }
    let mut written = Vec::new();
    for dir in [&man, &completions] {
        for e in std::fs::read_dir(dir)? {
            written.push(e?.path());
        }
    }
    written.sort();
    Ok(written)
}
