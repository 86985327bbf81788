//! The `mimid` binary: parse the command line, run the command, report failure on stderr with a
//! non-zero exit status. Everything else lives in `mimid_node::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mimid_node::cli::Cli::parse();
    match mimid_node::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mimid: {err:#}");
            ExitCode::FAILURE
        }
    }
}
