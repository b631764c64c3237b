//! The default model is embedded in the binary: the installed binary, run from a folder
//! outside the checkout with a fresh home and no `--model`, runs the demo, captions, answers,
//! classifies, describes its model and serves, all on the embedded default (written once into
//! the cache folder and read from there).
//!
//! The binary is installed with `cargo install --root` into a temporary folder, as a user
//! installs it; `--debug` and the tests' own target folder let cargo reuse the build the tests
//! already made instead of rebuilding everything in release mode (minutes on CI's two cores).

mod common;

use common::{scratch, MPLUG};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary installed into `dir/bin`, and a home and a working folder beside it.
struct Installed {
    bin: PathBuf,
    home: PathBuf,
    work: PathBuf,
}

impl Installed {
    fn new(dir: &Path) -> Self {
        // target/debug/mplug -> target
        let target = Path::new(MPLUG)
            .parent()
            .and_then(Path::parent)
            .expect("the binary's target folder");
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["install", "--debug", "--offline", "--locked", "--path"])
            .arg(crate_dir)
            .arg("--root")
            .arg(dir)
            .env("CARGO_TARGET_DIR", target)
            .output()
            .expect("run cargo install");
        assert!(
            out.status.success(),
            "cargo install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = dir.join("bin").join("mplug");
        assert!(bin.is_file(), "cargo install wrote no {}", bin.display());
        let home = dir.join("home");
        let work = dir.join("elsewhere");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        Installed { bin, home, work }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(&self.work)
            .env("HOME", &self.home)
            .env_remove("MPLUG_CACHE_DIR")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("MPLUG_GOLDEN_DIR")
            .env("RAYON_NUM_THREADS", "2")
            .stdin(Stdio::null());
        c
    }

    /// Runs to completion and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run the copy");
        assert!(
            out.status.success(),
            "mplug {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn the_binary_runs_the_embedded_default_away_from_the_checkout() {
    let dir = scratch("embedded-default");
    let app = Installed::new(&dir);

    let demo = app.ok(&["demo"]);
    for section in [
        "== captioning",
        "== visual question answering",
        "== grounding",
    ] {
        assert!(demo.contains(section), "{demo}");
    }
    // The files were written under the home's cache, nowhere near the checkout.
    let cache = app.home.join(".cache").join("mplug");
    let folders: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("the cache folder")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    let model = folders[0].join("mplug-tiny-world");
    assert!(demo.contains(&model.display().to_string()), "{demo}");

    // A picture of the user's own, by a relative name in the working folder.
    let picture = app.work.join("photo.png");
    std::fs::copy(model.join("examples").join("scene_3.png"), &picture).unwrap();
    let caption = app.ok(&["caption", "photo.png"]);
    let line = caption.lines().next().expect("a caption line");
    let text = line.split('\t').nth(1).expect("path<TAB>caption");
    assert!(!text.trim().is_empty(), "{caption}");

    let answer = app.ok(&["vqa", "photo.png", "how many shapes are there?"]);
    assert!(!answer.trim().is_empty());

    let labels = app.ok(&[
        "classify",
        "--label",
        "a red circle",
        "--label",
        "a blue square",
        "photo.png",
    ]);
    assert!(labels.starts_with("photo.png\t"), "{labels}");

    let info = app.ok(&["info"]);
    assert!(info.contains("mplug-tiny-world"), "{info}");

    // `mplug serve` with no model answers a caption request.
    let mut child = app
        .command(&["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120).saturating_sub(start.elapsed()))
            .expect("mplug serve did not start");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().to_string();
        }
    };
    let body = format!(
        "{{\"image\": \"{}\"}}",
        common::base64(&std::fs::read(&picture).unwrap())
    );
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "POST /v1/caption HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let _ = child.kill();
    let _ = child.wait();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"captions\""), "{reply}");
    let _ = std::fs::remove_dir_all(&dir);
}
