//! `bufscope man DIR` (hidden; `cargo xtask dist` packages its output): writes the man pages and
//! lists them.

use std::{path::Path, process::ExitCode, time::SystemTime};

use bufscope::cli_docs::write_man_pages;

pub fn run(dir: &Path, date: Option<&str>, cli: clap::Command) -> anyhow::Result<ExitCode> {
    let today = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let date = date.unwrap_or(&today[..10]);
    for page in write_man_pages(cli, dir, date)? {
        println!("{}", page.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--date`: a calendar date, YYYY-MM-DD.
pub fn parse_date(s: &str) -> Result<String, String> {
    humantime::parse_rfc3339_weak(&format!("{s} 00:00:00"))
        .map(|_| s.to_string())
        .map_err(|_| format!("`{s}` is not a date of the form YYYY-MM-DD"))
}
