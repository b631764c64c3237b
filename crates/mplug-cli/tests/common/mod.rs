//! Helpers of the binary's integration tests: the golden and image fixtures, running `mplug` with a
//! deadline, a spawned server and a small HTTP/1.1 client over loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `mplug` binary under test.
pub const MPLUG: &str = env!("CARGO_BIN_EXE_mplug");

/// The longest a command or a request may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(300);

#[path = "../../../mplug/tests/common/fixture_images.rs"]
mod fixture_images;
#[allow(unused_imports)]
pub use fixture_images::*;

/// The golden folder that parity checks read (`eval_cli`): `MPLUG_GOLDEN_DIR`, else the committed
/// copy.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("MPLUG_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => committed_golden_dir(),
    }
}

/// The golden folder committed with the project, whose tiny checkpoints the other tests of the
/// binary run as small models.
pub fn committed_golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden")
}

/// Every configuration folder (one holding a `config.json`) of the golden folder `root`, sorted;
/// at least one must exist.
pub fn config_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("golden dir {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no configuration folder in {}",
        root.display()
    );
    dirs
}

/// The tiny model the tests run: the committed golden folder's first configuration folder (its
/// per-task checkpoints beside a config.json), whatever its name.
pub fn tiny_model() -> PathBuf {
    config_dirs(&committed_golden_dir()).remove(0)
}

/// The configuration of [`tiny_model`].
pub fn tiny_config() -> mplug::MplugConfig {
    mplug::MplugConfig::from_file(tiny_model().join("config.json")).expect("tiny model config")
}

/// The shipped default model folder, `models/mplug-tiny-world`.
pub fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mplug-tiny-world")
}

/// One JSON value per line of `text` (the `--json` output of commands over several inputs, or
/// a JSON-lines file); a line that does not parse fails the test naming it.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The example images: the tests' own (see `fixture_images`), not the golden folder's.
pub fn images_dir() -> PathBuf {
    fixture_images_dir()
}

/// One example image (a name of [`FIXTURE_IMAGES`]).
pub fn image(name: &str) -> PathBuf {
    fixture_image(name)
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("mplug-cli-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `mplug ARGS` to completion (killed after [`DEADLINE`]).
pub fn mplug(args: &[&str]) -> Output {
    let mut child = Command::new(MPLUG)
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mplug");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait mplug") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mplug {args:?} ran longer than {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Runs `mplug ARGS` and expects success.
pub fn mplug_ok(args: &[&str]) -> Output {
    let out = mplug(args);
    assert_eq!(
        out.code, 0,
        "mplug {args:?} failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

/// Runs `mplug ARGS` and expects exit code 1 with one `error:` line on stderr holding `needle`.
pub fn mplug_fails(args: &[&str], needle: &str) -> Output {
    let out = mplug(args);
    assert_eq!(
        out.code, 1,
        "mplug {args:?} should fail with 1:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "mplug {args:?}: expected one error line, got {:?}",
        out.stderr
    );
    assert!(
        lines[0].starts_with("error: "),
        "mplug {args:?}: {:?}",
        lines[0]
    );
    assert!(
        lines[0].contains(needle),
        "mplug {args:?}: error {:?} does not mention {needle:?}",
        lines[0]
    );
    out
}

/// A running `mplug serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// The bound address.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `mplug serve MODEL --addr 127.0.0.1:0 EXTRA...` and waits for its address.
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        let mut args = vec![model.to_str().expect("utf-8 path")];
        args.extend(extra);
        Server::with_args(&args)
    }

    /// Starts `mplug serve ARGS... --addr 127.0.0.1:0` and waits for its address.
    pub fn with_args(args: &[&str]) -> Server {
        let mut child = Command::new(MPLUG)
            .arg("serve")
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .env("RAYON_NUM_THREADS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mplug serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the server never blocks.
                    continue;
                }
            }
        });
        let start = Instant::now();
        let mut seen = Vec::new();
        let addr = loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        break rest.trim().parse().expect("bound address");
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("mplug serve did not start; it said: {seen:?}");
                }
            }
        };
        Server { child, addr }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a request and reads the whole answer.
    pub fn request(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Response {
        request(
            self.addr,
            method,
            path,
            &[("content-type", content_type)],
            body,
        )
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"")
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.request(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with timeouts.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

/// Sends raw bytes and parses the answer.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The server may answer (413) before reading everything; the answer still arrives.
    let _ = s.write_all(bytes);
    let mut data = Vec::new();
    if let Err(e) = s.read_to_end(&mut data) {
        assert!(!data.is_empty(), "reading the answer failed: {e}");
    }
    parse_response(&data)
}

fn parse_response(data: &[u8]) -> Response {
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(data)));
    let head = String::from_utf8_lossy(&data[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = data[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    out
}

/// A `multipart/form-data` body: `(content type, bytes)`. Parts are `(name, file name, bytes)`.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "mplugtestboundary7d91";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!(
                    "content-disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     content-type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("content-disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Standard base64 of bytes (the tests' own encoder, independent of the server's decoder).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 of an example image.
pub fn image_b64(name: &str) -> String {
    image_b64_path(&image(name))
}

/// The base64 of any image file.
pub fn image_b64_path(path: &Path) -> String {
    base64(&std::fs::read(path).expect("image file"))
}

/// An uncompressed 24-bit BMP of `w x h` pixels with a colour gradient.
pub fn bmp(w: u32, h: u32) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    for y in 0..h {
        for x in 0..w {
            b.extend_from_slice(&[(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128]);
        }
        b.resize(b.len() + (row - w * 3) as usize, 0);
    }
    b
}
