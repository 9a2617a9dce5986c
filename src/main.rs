//! The `syncerd` binary: parse the command line, set up logging, dispatch, report.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, with its settings in `.cargo/config.toml`; `--no-default-features` builds with the
/// system allocator (for heaptrack, which cannot see jemalloc's calls).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            // One clear line: the error and its causes, never a backtrace or a Debug dump.
            let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
            eprintln!("error: {}", syncerd::secret::redact_text(&chain.join(": ")));
            ExitCode::FAILURE
        }
    }
}
