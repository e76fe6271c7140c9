//! A real third-party RDP server for tests: FreeRDP 3's shadow server sharing an Xvfb display,
//! with NLA against a SAM file. Installs the Debian packages (bookworm-backports) when they are
//! missing. Each `ShadowServer` has its own display, port and home directory, and kills its
//! processes when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub const USER: &str = "rdpuser";
pub const PASSWORD: &str = "Rdp-Test-Pass1";

pub struct ShadowServer {
    pub port: u16,
    pub display: u32,
    dir: PathBuf,
    xvfb: Child,
    shadow: Child,
    pub log: Arc<Mutex<String>>,
}

/// Installs FreeRDP 3, Xvfb and xsetroot when missing (once per test process), with the same
/// script the test command runs.
pub fn ensure_installed() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if have("freerdp-shadow-cli3") && have("Xvfb") && have("winpr-hash3") && have("xsetroot") {
            return;
        }
        eprintln!("installing FreeRDP 3 shadow server and Xvfb (tests/install-deps.sh)");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/install-deps.sh");
        run(Command::new("bash").arg(script));
    });
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A display number with neither a lock file nor a socket, distinct per fixture.
fn free_display() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 100 + (std::process::id() % 200) * 4;
    loop {
        let n = base + NEXT.fetch_add(1, Ordering::Relaxed);
        if !Path::new(&format!("/tmp/.X{n}-lock")).exists()
            && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
        {
            return n;
        }
    }
}

impl ShadowServer {
    /// Starts Xvfb (`width`×`height`) and the shadow server with NLA for `USER`/`PASSWORD`.
    pub fn start(width: u32, height: u32) -> ShadowServer {
        ensure_installed();
        let port = free_port();
        // A display number of this process's own range (see `free_display`); the server counts
        // as started only once a real client (xsetroot) has been served by it.
        let display = free_display();
        let mut xvfb = Command::new("Xvfb")
            .arg(format!(":{display}"))
            .args(["-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            // Without -noreset the server resets when its last client leaves (the readiness
            // probe below), and a client connecting during the reset is refused.
            .args(["-nolisten", "tcp", "-noreset"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            let served = Command::new("xsetroot")
                .args(["-display", &format!(":{display}"), "-solid", "black"])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if served {
                break;
            }
            if let Ok(Some(status)) = xvfb.try_wait() {
                panic!("Xvfb :{display} exited at start: {status}");
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = xvfb.kill();
                panic!("Xvfb :{display} did not serve clients within 15 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir =
            std::env::temp_dir().join(format!("rdpwire-freerdp-{}-{display}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        let sam = Command::new("winpr-hash3")
            .args(["-u", USER, "-p", PASSWORD, "-f", "sam"])
            .output()
            .unwrap();
        assert!(sam.status.success());
        let sam_path = dir.join("sam.txt");
        std::fs::write(&sam_path, &sam.stdout).unwrap();

        let mut shadow = Command::new("freerdp-shadow-cli3")
            .env("DISPLAY", format!(":{display}"))
            .env("HOME", &dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .arg("/bind-address:127.0.0.1")
            .arg(format!("/port:{port}"))
            .arg(format!("/sam-file:{}", sam_path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            shadow
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            shadow
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let server = ShadowServer {
            port,
            display,
            dir,
            xvfb,
            shadow,
            log,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(15) {
                panic!(
                    "the shadow server on :{display} did not listen on port {port} within 15 s:\n{}",
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Paints the root window of the display a solid colour.
    pub fn paint(&self, colour: &str) {
        run(Command::new("xsetroot")
            .env("DISPLAY", format!(":{}", self.display))
            .args(["-solid", colour]));
    }

    /// Tiles the root window with random bits in `fg` on black: a picture whose H.264 key
    /// frames are about a megabyte at 1080p.
    pub fn paint_noise(&self, fg: &str) {
        let path = std::env::temp_dir().join(format!(
            "rdpwire-noise-{}-{}.xbm",
            std::process::id(),
            self.display
        ));
        std::fs::write(&path, random_xbm(256, 256)).unwrap();
        run(Command::new("xsetroot")
            .env("DISPLAY", format!(":{}", self.display))
            .arg("-bitmap")
            .arg(&path)
            .args(["-fg", fg, "-bg", "black"]));
        let _ = std::fs::remove_file(&path);
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ShadowServer {
    fn drop(&mut self) {
        stop(&mut self.shadow);
        stop(&mut self.xvfb);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, so Xvfb removes its lock file and socket; SIGKILL after 2 s.
fn stop(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An X bitmap of random bits: tiled over the screen, a picture H.264 cannot make small.
pub fn random_xbm(width: u32, height: u32) -> String {
    let mut seed = 0x9e37_79b9_u32;
    let mut out = format!(
        "#define noise_width {width}\n#define noise_height {height}\nstatic unsigned char noise_bits[] = {{\n"
    );
    for i in 0..width * height / 8 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        out.push_str(&format!("0x{:02x},", seed & 0xff));
        if i % 16 == 15 {
            out.push('\n');
        }
    }
    out.push_str("};\n");
    out
}
