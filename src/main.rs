//! The `taizhang` command: a thin layer over the library (serve, keygen, submit, verify,
//! export, reindex, demo). Exit codes: 0 ok, 1 failure, 2 usage, 3 verification failed.

mod cli;
mod cli_audit;
mod cli_epcis;
mod demo;
mod report;

use clap::Parser;

/// mimalloc: the ledger moves many small buffers between threads (prepared records, view
/// values, receipts), where glibc's allocator measured ~15 % slower end to end
/// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // For the docs' test (tests/it/docs.rs): check that a command line parses, run nothing.
    if std::env::var_os("TAIZHANG_PARSE_ONLY").is_some() {
        return match cli::Cli::try_parse() {
            Ok(_) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                let _ = e.print();
                std::process::ExitCode::from(2)
            }
        };
    }
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAIZHANG_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.default_log()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
