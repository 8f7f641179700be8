//! Shell completions and man pages, made from a binary's own clap definition so they cannot
//! drift from its `--help`: the hidden `completions SHELL` and `man [DIR]` subcommands of every
//! taskmill binary.

use std::io::Write as _;
use std::path::PathBuf;

use clap_complete::Shell;

/// Subcommands that describe the binary itself; hidden from `--help`, which they reproduce.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Docs {
    /// Print a completion script on stdout, e.g. `taskmill-master completions bash >
    /// /usr/share/bash-completion/completions/taskmill-master`.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
    /// Write the man pages (the binary's, and one per subcommand) into DIR, printing their
    /// paths; without DIR, print the binary's own page on stdout.
    #[command(hide = true)]
    Man {
        /// Directory for the pages (created if missing).
        dir: Option<PathBuf>,
    },
}

impl Docs {
    /// Writes what was asked for about `cmd`, the binary's `Cli::command()`.
    pub fn write(&self, cmd: clap::Command) -> std::io::Result<()> {
        // `help` as a subcommand would get pages and completions of its own, repeating the
        // others.
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        let mut out = std::io::stdout().lock();
        match self {
            Docs::Completions { shell } => {
                // Into memory first: the generators panic on a failed write (`| head`).
                let (name, mut script) = (cmd.get_name().to_owned(), Vec::new());
                clap_complete::generate(*shell, &mut cmd, name, &mut script);
                out.write_all(&script)?;
            }
            Docs::Man { dir: None } => clap_mangen::Man::new(cmd).render(&mut out)?,
            Docs::Man { dir: Some(dir) } => {
                std::fs::create_dir_all(dir)?;
                clap_mangen::generate_to(cmd, dir)?;
                let mut pages: Vec<_> = std::fs::read_dir(dir)?
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
                    .collect();
                pages.sort();
                for page in pages {
                    writeln!(out, "{}", page.display())?;
                }
            }
        }
        out.flush()
    }
}
