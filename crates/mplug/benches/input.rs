//! Input throughput: images/s for the 384 px CLIP pipeline from a JPEG, and strings/s for the
//! tokenizer. Plain `main` (no harness): `cargo bench -p mplug --bench input`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use mplug::input::{
    EncodeOptions, GroundingPreprocessor, ImageConfig, ImagePreprocessor, LetterboxConfig,
    Tokenizer,
};

const BUDGET: Duration = Duration::from_secs(2);

/// Runs `f` (which processes `items` items) until the time budget is spent; returns items/s.
fn rate(items: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed() < BUDGET {
        f();
        runs += 1;
    }
    (runs * items) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let golden = std::env::var("MPLUG_GOLDEN_DIR").map_or_else(
        |_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/golden"
            ))
        },
        PathBuf::from,
    );
    // The first JPEG that the golden folder's own list names.
    let io = golden.join("io");
    let list = std::fs::read_to_string(io.join("preprocess.json")).expect("golden preprocess.json");
    let list: serde_json::Value = serde_json::from_str(&list).expect("preprocess.json");
    let name = list["images"]
        .as_array()
        .expect("preprocess.json: images")
        .iter()
        .filter_map(|e| e["file"].as_str())
        .find(|f| f.ends_with(".jpg") || f.ends_with(".jpeg"))
        .expect("preprocess.json names no JPEG");
    let jpeg = io.join("images").join(name);
    let dev = Device::Cpu;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("input bench ({threads} threads available)");

    let pre = ImagePreprocessor::new(ImageConfig::new(384)).expect("preprocessor");
    let bytes = std::fs::read(&jpeg).expect("golden JPEG");
    let rgb = pre.load_rgb(&jpeg).expect("decode");
    let r = rate(1, || {
        pre.preprocess_bytes(&bytes, name, &dev)
            .expect("preprocess");
    });
    println!(
        "image 384px from JPEG {}x{}, one at a time:  {r:8.1} images/s",
        rgb.width(),
        rgb.height()
    );
    let r = rate(1, || {
        pre.preprocess_image(&rgb, &dev).expect("preprocess");
    });
    println!("image 384px, resize+normalize only:           {r:8.1} images/s");
    let paths = vec![jpeg.clone(); 16];
    let r = rate(paths.len(), || {
        pre.preprocess_paths(&paths, &dev).expect("batch");
    });
    println!("image 384px from JPEG files, batch of 16:     {r:8.1} images/s");
    let ground = GroundingPreprocessor::new(LetterboxConfig::new(384)).expect("letterbox");
    let r = rate(1, || {
        ground.preprocess_image(&rgb, &dev).expect("letterbox");
    });
    println!("grounding letterbox 384px (decoded input):    {r:8.1} images/s");

    let tok = Tokenizer::bert_base_uncased().expect("tokenizer");
    let texts: Vec<String> = [
        "what color is the cat's collar?",
        "a man riding a wave on top of a surfboard.",
        "how many people are in the picture?",
        "two dogs playing with a frisbee in a grassy park on a sunny afternoon",
    ]
    .iter()
    .cycle()
    .take(64)
    .map(|s| s.to_string())
    .collect();
    let r = rate(texts.len(), || {
        for t in &texts {
            tok.encode(t, Some(25)).expect("encode");
        }
    });
    println!("tokenize, one string at a time:               {r:8.0} strings/s");
    let opts = EncodeOptions::longest().truncate(25);
    let r = rate(texts.len(), || {
        tok.encode_batch(&texts, &opts).expect("batch");
    });
    println!("tokenize, padded batches of 64:               {r:8.0} strings/s");
    let ids = tok.encode(&texts[1], None).expect("encode");
    let r = rate(1000, || {
        for _ in 0..1000 {
            std::hint::black_box(tok.decode_postprocessed(&ids));
        }
    });
    println!("decode + post-process a caption:              {r:8.0} strings/s");
}
