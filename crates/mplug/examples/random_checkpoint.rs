//! Writes a checkpoint of random weights in a configuration's shapes (`base` by default, or
//! `large`/`tiny`) for a task, as safetensors: a file to measure loading with, since no real
//! weights can be downloaded here. The README's figures for the memory a load takes come from
//! `cargo run --release -p mplug --example random_checkpoint -- /tmp/base.safetensors`, then
//! `/usr/bin/time -f %M mplug caption --model /tmp/base.safetensors --preset base --dtype int8
//! IMAGE` (and `f32`, `bf16`).
//! Arguments: PATH [PRESET [TASK]].

use mplug::model::{random_tensors, Task};
use mplug::MplugConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: random_checkpoint PATH [PRESET [TASK]]")?;
    let preset = args.next().unwrap_or_else(|| "base".into());
    let task = Task::parse(&args.next().unwrap_or_else(|| "caption".into()))?;
    let cfg = MplugConfig::preset(&preset)?;
    let tensors = random_tensors(&cfg, task, candle_core::DType::F32)?;
    candle_core::safetensors::save(&tensors, &path)?;
    println!(
        "wrote {} tensors of {preset} {task} to {path}",
        tensors.len()
    );
    Ok(())
}
