//! `mplug data`: datasets for training and evaluation.

use anyhow::Result;
use mplug_world::{generate, WorldConfig};
use std::path::PathBuf;
use std::time::Instant;

/// `mplug data`.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

/// What `mplug data` does.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Write a synthetic world of shapes (images, clips) in benchmark annotation formats.
    ///
    /// Seeded images of coloured shapes and GIF clips of simple events, annotated as COCO
    /// captions, VQA, image-text retrieval, RefCOCO grounding and MSRVTT video QA, retrieval
    /// and captioning, with the vocabulary all texts tokenize with (vocab.txt).
    Generate(GenerateArgs),
}

/// `mplug data generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Output folder (created if missing; files of an earlier run are overwritten).
    pub out: PathBuf,
    /// Seed of every random choice: one seed and size give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train images; val, test and heldout get max(size / 10, 50) each.
    #[arg(long, default_value_t = 2000)]
    pub size: usize,
    /// Side of the square images and clips, in pixels.
    #[arg(long, default_value_t = 96)]
    pub image_size: u32,
    /// Train clips (default: size / 4); test gets max(clips / 5, 40); 0 writes no video files.
    #[arg(long)]
    pub clips: Option<usize>,
    /// Frames per clip (8 to 16), 100 ms each.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Objects stand on the cell centres of an N x N lattice; 0 puts them anywhere. The
    /// default, 8, lines them up with the tiny model's 8 x 8 patches: a visual tower trained
    /// from nothing learns a shape seen at one alignment with its patches in a few hundred
    /// updates, at every alignment only in thousands (README, the generated world).
    #[arg(long, default_value_t = mplug_world::DEFAULT_PLACES)]
    pub places: u32,
}

/// Runs `mplug data`.
pub fn run(a: &DataArgs) -> Result<()> {
    match &a.command {
        DataCommand::Generate(g) => generate_cmd(g),
    }
}

fn generate_cmd(a: &GenerateArgs) -> Result<()> {
    let cfg = WorldConfig {
        seed: a.seed,
        train_images: a.size,
        image_size: a.image_size,
        train_clips: a.clips.unwrap_or(a.size / 4),
        frames: a.frames,
        places: a.places,
    };
    let start = Instant::now();
    // Library errors name the path or the setting at fault.
    let summary = generate(&a.out, &cfg)?;
    println!(
        "wrote {}: {summary}; {:.1} s",
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
