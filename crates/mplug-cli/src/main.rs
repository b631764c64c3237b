//! The `mplug` command.

mod bench;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mPLUG vision-language model: captioning, VQA, retrieval, grounding and video.
#[derive(Debug, Parser)]
#[command(name = "mplug", version, about)]
struct Cli {
    /// Worker threads for tensor math (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print speed figures of a released model size with random weights.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // candle's CPU kernels size their pool from this variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let result = match &cli.command {
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
