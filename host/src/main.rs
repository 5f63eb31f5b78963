//! The `todo-eventd` binary: parses arguments, sets up logging and calls
//! into the library ([`todo_eventd::cli`]).

use std::process::ExitCode;

use clap::Parser;
use todo_eventd::cli::{self, Cli};

fn main() -> ExitCode {
    todo_eventd::heap::limit_retained_heap();
    let cli = Cli::parse();
    cli.init_logging();
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
