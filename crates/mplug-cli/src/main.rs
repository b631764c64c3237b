//! The `mplug` command.

mod baseline;
mod bench;
mod bench_index;
mod convert;
mod data_cmd;
mod default_model;
mod demo;
mod eval;
mod index_cmd;
mod info;
mod model_args;
mod serve;
mod tasks;
mod train_cmd;

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
    /// Run every task on bundled example images.
    Demo(demo::DemoArgs),
    /// Caption images.
    Caption(tasks::CaptionArgs),
    /// Answer a question about an image (free-form or from a list).
    Vqa(tasks::VqaArgs),
    /// Find the box a referring expression describes.
    Ground(tasks::GroundArgs),
    /// Rank texts for images by ITC similarity re-scored with ITM.
    Retrieve(tasks::RetrieveArgs),
    /// Label images zero-shot: each candidate label's probability (ITC similarity of "a photo
    /// of LABEL" at the model's temperature, softmax over the labels).
    Classify(tasks::ClassifyArgs),
    /// Index a folder of images for text search (ITC features on disk; updates incrementally).
    Index(index_cmd::IndexArgs),
    /// Search an image index: ITC top k re-ranked by ITM.
    Search(index_cmd::SearchArgs),
    /// Zero-shot video: caption, qa, retrieve on clips.
    Video(tasks::VideoArgs),
    /// Print speed figures of a released model size with random weights.
    Bench(bench::BenchArgs),
    /// Evaluate on a benchmark's annotation file: predictions, metrics, result files.
    Eval(eval::EvalArgs),
    /// Score a blind baseline (text only, no image) fitted on the training annotations.
    Baseline(baseline::BaselineArgs),
    /// Write a model folder (config.json, model.safetensors, vocab.txt, README.md) from a
    /// released checkpoint.
    Convert(convert::ConvertArgs),
    /// Print a model's configuration, task and parameter counts.
    Info(info::InfoArgs),
    /// Serve a model over HTTP (JSON API, metrics, OpenAPI document, web page).
    Serve(serve::ServeArgs),
    /// Pre-train on image-text pairs (ITC, ITM, MLM, PrefixLM).
    Pretrain(train_cmd::PretrainArgs),
    /// Pre-train the visual tower alone on labelled images (`[{image, labels: [...]}]`), the
    /// stand-in for CLIP's pre-training: writes OUT/tower.safetensors, which `pretrain
    /// --init-clip` starts from.
    PretrainTower(train_cmd::PretrainTowerArgs),
    /// Fine-tune a model for a task on its annotation file.
    Finetune(train_cmd::FinetuneArgs),
    /// Generate datasets.
    Data(data_cmd::DataArgs),
}

/// The most tensor-math threads `--threads` takes: more than any machine's cores only adds
/// start-up time (100,000 threads took minutes to spawn, which looked like a hang).
const MAX_THREADS: usize = 1024;

fn main() -> ExitCode {
    mplug::model::kernels::tune_allocator();
    // Before any thread exists: every thread inherits it.
    mplug::model::kernels::flush_denormals();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_broken_pipe();
    }
    // Training with concurrent micro-batches runs each on one tensor-math thread.
    let threads = cli.threads.or(match &cli.command {
        Command::Pretrain(a) => a.train.math_threads(),
        Command::PretrainTower(a) => a.train.math_threads(),
        Command::Finetune(a) => a.train_opts().math_threads(),
        _ => None,
    });
    if let Some(n) = threads.filter(|n| !(1..=MAX_THREADS).contains(n)) {
        eprintln!("error: --threads must be 1..={MAX_THREADS}, not {n}");
        return ExitCode::FAILURE;
    }
    if let Some(n) = threads {
        // candle's CPU kernels size their pool from this variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let result = match &cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Caption(a) => tasks::caption(a),
        Command::Vqa(a) => tasks::vqa(a),
        Command::Ground(a) => tasks::ground(a),
        Command::Retrieve(a) => tasks::retrieve(a),
        Command::Classify(a) => tasks::classify(a),
        Command::Index(a) => index_cmd::index(a),
        Command::Search(a) => index_cmd::search(a),
        Command::Video(a) => tasks::video(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Baseline(a) => baseline::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Info(a) => info::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Pretrain(a) => train_cmd::pretrain(a),
        Command::PretrainTower(a) => train_cmd::pretrain_tower(a),
        Command::Finetune(a) => train_cmd::finetune(a),
        Command::Data(a) => data_cmd::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", tasks::escape_controls(&message(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Lets a closed standard output (`mplug caption ... | head`) end the process quietly, as it
/// ends other command-line tools, instead of panicking in `println!`: Rust ignores SIGPIPE, so
/// every write to a closed pipe fails and the print macros panic. The server keeps ignoring it,
/// so that a client closing its socket never ends the process.
fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal at start-up, before any thread
    // that could be writing exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes on one line, skipping a cause whose text the line already holds
/// (library errors often name their source in their own message).
fn message(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand's options are unique and well formed (clap checks this only when a
    /// subcommand is first parsed).
    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
