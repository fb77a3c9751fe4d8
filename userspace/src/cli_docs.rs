//! Man pages and shell completions generated from the command line's clap definitions: what
//! `bufscope completions SHELL` prints and `bufscope man DIR` writes for `cargo xtask dist`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use clap_complete::Shell;

/// The name users type: completions and man pages are written for it.
const BIN_NAME: &str = "bufscope";

/// Why the man pages could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ManPageError {
    #[error("creating the directory {}", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("writing {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
}

/// `shell`'s completion script for `cli` (the whole command line, subcommands and values).
pub fn completion_script(shell: Shell, mut cli: clap::Command) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli, BIN_NAME, &mut script);
    script
}

/// Writes one man page per visible command into `dir` (created if missing): `bufscope.1`, then
/// `bufscope-SUBCOMMAND.1` for each subcommand, theirs after them; returns the files written.
/// `date` (YYYY-MM-DD) is what the pages' footers show.
pub fn write_man_pages(
    cli: clap::Command,
    dir: &Path,
    date: &str,
) -> Result<Vec<PathBuf>, ManPageError> {
    fs::create_dir_all(dir).map_err(|e| ManPageError::CreateDir(dir.to_path_buf(), e))?;
    // Built, every subcommand knows its full name (`bufscope-live`), which names its page; `help`
    // is only a way to reach --help, which every page already is.
    let mut cli = cli.name(BIN_NAME).disable_help_subcommand(true);
    cli.build();
    // Every page's footer names the program and its version, subcommands' too.
    let footer = Footer {
        date,
        source: &format!("{BIN_NAME} {}", cli.get_version().unwrap_or_default()),
    };
    let mut written = Vec::new();
    write_pages(cli, &footer, dir, &mut written)?;
    Ok(written)
}

/// What every page's footer shows. A date is needed: the roff writer drops an empty one, which
/// would shift the source into its place.
struct Footer<'a> {
    date: &'a str,
    source: &'a str,
}

fn write_pages(
    cmd: clap::Command,
    footer: &Footer,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManPageError> {
    let subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    let page = clap_mangen::Man::new(cmd)
        .date(footer.date)
        .source(footer.source)
        .manual("User Commands");
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff)
        .and_then(|()| fs::write(&path, roff))
        .map_err(|e| ManPageError::Write(path.clone(), e))?;
    written.push(path);
    for sub in subcommands {
        write_pages(sub, footer, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("anything")
            .version("1.2.3")
            .about("Says hello")
            .subcommand(
                clap::Command::new("greet")
                    .about("Greets someone")
                    .arg(clap::Arg::new("loudly").long("loudly").help("Shout it")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn man_pages_name_each_visible_command_and_skip_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man1");
        let written = write_man_pages(cli(), &out, "2026-01-02").unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["bufscope.1", "bufscope-greet.1"]);
        let greet = fs::read_to_string(out.join("bufscope-greet.1")).unwrap();
        assert!(
            greet.contains("bufscope\\-greet \\- Greets someone"),
            "{greet}"
        );
        assert!(greet.contains("loudly"), "{greet}");
        assert!(
            greet.contains(".TH bufscope-greet 1 2026-01-02 \"bufscope 1.2.3\" \"User Commands\""),
            "{greet}"
        );
    }

    #[test]
    fn man_pages_say_which_file_could_not_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let e = write_man_pages(cli(), &file, "2026-01-02").unwrap_err();
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }

    #[test]
    fn completions_cover_subcommands_and_options_for_each_shell() {
        for (shell, marker) in [
            (Shell::Bash, "complete -F _bufscope"),
            (Shell::Zsh, "#compdef bufscope"),
            (Shell::Fish, "complete -c bufscope"),
        ] {
            let script = String::from_utf8(completion_script(shell, cli())).unwrap();
            assert!(script.contains(marker), "{shell}: {script}");
            assert!(
                script.contains("greet") && script.contains("loudly"),
                "{shell}: {script}"
            );
        }
    }
}
