//! The web page at `/`, driven by headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs): a picture goes through the page's upload path and the task's answer appears.
//!
//! The page's `#selftest` hook draws a picture in the browser and hands it to the same code a
//! dropped file takes (FileReader, base64, the JSON API), since a headless browser without a
//! driver cannot use the file picker.

mod common;

use common::*;
use std::process::Command;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The page's DOM after the browser ran it.
fn dump_dom(browser: &str, url: &str, profile: &std::path::Path) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=60000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in a dumped DOM.
fn element(dom: &str, id: &str) -> String {
    let open = format!("id=\"{id}\">");
    let Some(start) = dom.find(&open).map(|i| i + open.len()) else {
        return String::new();
    };
    dom[start..]
        .split("</")
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn the_page_shows_a_caption_and_a_grounded_box() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let dir = scratch("web-page");
    for (checkpoint, task, expect) in [
        ("caption.pth", "caption", "[unused"),
        ("grounding.pth", "grounding", "box (x0, y0, x1, y1)"),
    ] {
        let model = tiny_model().join(checkpoint);
        let server = Server::start(&model, &["--task", task]);
        // Under a loaded machine (CI runs every test binary at once) headless Chromium
        // sometimes returns the page before its script has finished; each try starts a fresh
        // browser profile, and the answer must appear within a few tries.
        let mut dom = String::new();
        for attempt in 0..4 {
            dom = dump_dom(
                browser,
                &format!("http://{}/#selftest", server.addr),
                &dir.join(format!("{task}-{attempt}")),
            );
            if element(&dom, "out").contains(expect) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1 + attempt));
        }
        let out = element(&dom, "out");
        assert!(out.contains(expect), "{task}: page output {out:?}");
        assert_eq!(element(&dom, "error"), "", "{task}: page error");
        assert!(element(&dom, "model").contains(task), "{task}: model line");
    }
    // One server for every task (the embedded default): the page shows each task's panel,
    // zero-shot classification among them, and its self-test runs them all, each answer under
    // its task's name.
    let server = Server::with_args(&[]);
    let tasks = ["caption", "vqa", "retrieval", "grounding", "classify"];
    let mut dom = String::new();
    for attempt in 0..4 {
        dom = dump_dom(
            browser,
            &format!("http://{}/#selftest", server.addr),
            &dir.join(format!("all-{attempt}")),
        );
        let out = element(&dom, "out");
        if tasks.iter().all(|t| out.contains(&format!("{t}: "))) && !out.contains("working") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1 + attempt));
    }
    let out = element(&dom, "out");
    for t in tasks {
        assert!(out.contains(&format!("{t}: ")), "no {t} answer in {out:?}");
    }
    assert!(out.contains("grounding: box (x0, y0, x1, y1)"), "{out:?}");
    assert_eq!(element(&dom, "error"), "", "page error");
    std::fs::remove_dir_all(&dir).ok();
}
