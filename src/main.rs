//! The `kiln` command: parses arguments and calls the library (see `cli/`). No logic lives here.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
