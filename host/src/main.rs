//! The `todo-eventd` binary: parses arguments, sets up logging and calls
//! into the library ([`todo_eventd::cli`]).

use std::process::ExitCode;

use clap::Parser;
use todo_eventd::cli::{self, Cli};
use todo_eventd::sandbox;

fn main() -> ExitCode {
    todo_eventd::heap::limit_retained_heap();
    // The daemon runs itself to compile a plugin (`sandbox::Compiler`): no
    // argument parsing, logging or runtime, nothing on stdout but the
    // artifact, and the error last on stderr.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|arg| arg == sandbox::CHILD_COMMAND) && args.next().is_none() {
        return sandbox::child_main(std::io::stdin().lock(), std::io::stdout().lock());
    }
    let cli = Cli::parse();
    cli.init_logging();
    if cli.raises_open_file_limit() {
        match todo_eventd::descriptors::raise_open_file_limit() {
            Ok(Some(raised)) => tracing::info!(
                from = raised.from,
                to = raised.to,
                "Raised the open-file limit to the hard limit."
            ),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "Could not raise the open-file limit."),
        }
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
