//! Connection tokens and the target policy, end to end: the real gateway binary, tokens minted
//! by `rdpwire token` (and by the Python example of docs/security.md), the embedded demo
//! desktop as the RDP server. What is checked is what a page sees: frames arriving, or the
//! Disconnected reason and the close frame.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use rdpwire::demo::{DemoAudio, DemoOptions, DemoServer};
use rdpwire::protocol::{FromBrowser, ToBrowser};
use support::{Gateway, TempDir, BIN, TARGET_ALLOW_ENV};
use tungstenite::Message;
use zeroize::Zeroizing;

const USER: &str = "demo";
const PASSWORD: &str = "demo-pass-7f3a";
/// The gateway's current key (id 2, mints) and the one being retired (id 1).
const KEY_NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const KEY_OLD: &str = "0101010101010101010101010101010101010101010101010101010101010101";
/// Another gateway's key, under an id this gateway also uses.
const KEY_OTHER: &str = "9999999999999999999999999999999999999999999999999999999999999999";

const NOT_VALID: &str = "the connection token is not valid for this gateway";

fn demo_server() -> DemoServer {
    support::init_logs();
    DemoServer::start(DemoOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        username: USER.to_owned(),
        password: PASSWORD.to_owned(),
        audio: DemoAudio::Off,
        content: rdpwire::demo::Content::Desktop,
        max_connections: rdpwire::demo::MAX_CONNECTIONS,
    })
    .unwrap()
}

/// The keys reach the gateway and `rdpwire token` through environment variables only.
fn with_keys(mut cmd: Command) -> Command {
    cmd.env("TEST_KEY_NEW", KEY_NEW)
        .env("TEST_KEY_OLD", KEY_OLD)
        .env("TEST_KEY_OTHER", KEY_OTHER)
        .env("TEST_RDP_PASSWORD", PASSWORD);
    cmd
}

const GATEWAY_KEYS: &str = "2=env:TEST_KEY_NEW,1=env:TEST_KEY_OLD";

fn gateway(args: &[&str]) -> Gateway {
    let mut all = vec!["--cores", "1", "--token-keys", GATEWAY_KEYS];
    all.extend_from_slice(args);
    Gateway::start_with(with_keys(Command::new(BIN)), &all)
}

/// `rdpwire token` with `keys` (its first mints) for `target`; the token it printed.
fn mint(keys: &str, target: &str, extra: &[&str]) -> Zeroizing<String> {
    let out = with_keys(Command::new(BIN))
        .args(["token", "--token-keys", keys, "--target", target])
        .args(["--user", USER, "--password-env", "TEST_RDP_PASSWORD"])
        .args(["--tls", "insecure"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rdpwire token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.trim().to_owned();
    assert!(!token.is_empty() && !token.contains(char::is_whitespace));
    assert!(
        !text.contains(PASSWORD),
        "the token must not show the password"
    );
    Zeroizing::new(token)
}

fn token_hello(token: &str) -> FromBrowser {
    FromBrowser::TokenHello {
        width: 1024,
        height: 768,
        token: Zeroizing::new(token.to_owned()),
    }
}

/// What the page sees of a session the gateway ends: the Disconnected reason, the close code
/// and the close reason.
fn ended(gw: &Gateway, hello: FromBrowser) -> (String, u16, String) {
    let mut ws = gw.ws().unwrap();
    ws.hello();
    ws.send(&hello);
    let mut reason = String::new();
    loop {
        match ws.ws.read() {
            Ok(Message::Binary(b)) => {
                if let Ok(ToBrowser::Disconnected { reason: r }) = ToBrowser::decode(&b) {
                    reason = r.to_string();
                }
            }
            Ok(Message::Close(Some(f))) => {
                return (reason, u16::from(f.code), f.reason.to_string())
            }
            Ok(Message::Close(None)) => panic!("close without a code\n{}", gw.log_text()),
            Ok(_) => {}
            Err(e) => panic!("{e}\n{}", gw.log_text()),
        }
    }
}

/// Asserts the session was refused with `code` and exactly `reason`, shown both ways.
#[track_caller]
fn assert_refused(got: (String, u16, String), code: u16, reason: &str) {
    assert_eq!(got, (reason.to_owned(), code, reason.to_owned()));
}

/// Runs a session to its `frames`-th frame, acknowledging each; returns the status texts.
fn frames_arrive(gw: &Gateway, hello: FromBrowser, frames: u32) -> Vec<String> {
    let mut ws = gw.ws().unwrap();
    ws.hello();
    ws.send(&hello);
    let started = Instant::now();
    let mut states = Vec::new();
    let mut decoded = 0;
    let mut pictures = 0;
    while decoded < frames {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{decoded} frames after 30 s; states {states:?}\n{}",
            gw.log_text()
        );
        let m = ws.next_logged(gw);
        match ToBrowser::decode(&m).unwrap() {
            ToBrowser::Status { text, .. } => states.push(text.to_string()),
            ToBrowser::Avc420 { access_unit, .. } => {
                assert!(!access_unit.is_empty());
                pictures += 1;
            }
            ToBrowser::EndFrame { frame_id } => {
                decoded += 1;
                ws.send(&FromBrowser::FrameDecoded {
                    frame_id,
                    frames_decoded: decoded,
                    queue_depth: 0,
                });
            }
            ToBrowser::Disconnected { reason } => {
                panic!("disconnected: {reason}\n{}", gw.log_text())
            }
            _ => {}
        }
    }
    assert!(pictures > 0, "frames without pictures");
    ws.close();
    states
}

#[test]
fn a_good_token_reaches_the_demo_desktop_once() {
    let server = demo_server();
    let target = format!("127.0.0.1:{}", server.addr().port());
    let gw = gateway(&[]);

    // Minted with the key being retired: still accepted during the rotation.
    let token = mint("1=env:TEST_KEY_OLD", &target, &["--ttl", "60s"]);
    let states = frames_arrive(&gw, token_hello(&token), 3);
    assert_eq!(
        states,
        [
            "connecting".to_owned(),
            format!("connecting to {target}"),
            format!("authenticating as {USER}"),
            "signed in, opening the desktop".to_owned(),
            "connected".to_owned(),
        ]
    );

    // The same token again: single use.
    assert_refused(
        ended(&gw, token_hello(&token)),
        4002,
        "the connection token was already used",
    );

    // Minted with the current key.
    let fresh = mint("2=env:TEST_KEY_NEW", &target, &[]);
    frames_arrive(&gw, token_hello(&fresh), 1);

    // Neither the tokens nor the password appear in the log or the metrics.
    let metrics = gw.metrics();
    for text in [gw.log_text(), metrics.0.clone()] {
        for secret in [token.as_str(), fresh.as_str(), PASSWORD] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
    }
    assert!(gw.log_text().contains("connection token redeemed"));
    assert_eq!(
        metrics.get("rdpwire_connection_tokens_total{result=\"redeemed\"}"),
        2
    );
    assert_eq!(
        metrics.get("rdpwire_connection_tokens_total{result=\"refused\"}"),
        1
    );
}

#[test]
fn expired_tampered_wrong_key_and_oversize_tokens_are_refused() {
    let server = demo_server();
    let target = format!("127.0.0.1:{}", server.addr().port());
    let gw = gateway(&["--token-clock-skew", "0s", "--token-max-ttl", "2m"]);

    // Expired: a one-second token, presented after its second (and no skew allowed).
    let short = mint("2=env:TEST_KEY_NEW", &target, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_refused(
        ended(&gw, token_hello(&short)),
        4002,
        "the connection token has expired",
    );

    // Tampered: one character of the sealed part changed.
    let good = mint("2=env:TEST_KEY_NEW", &target, &[]);
    let mut bytes = good.as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_refused(ended(&gw, token_hello(&tampered)), 4002, NOT_VALID);
    // Truncated, and not base64url at all.
    assert_refused(
        ended(&gw, token_hello(&good[..good.len() - 3])),
        4002,
        NOT_VALID,
    );
    assert_refused(ended(&gw, token_hello("not a token!")), 4002, NOT_VALID);

    // Wrong key: another gateway's key under an id this gateway uses, and an id it has not.
    let other = mint("2=env:TEST_KEY_OTHER", &target, &[]);
    assert_refused(ended(&gw, token_hello(&other)), 4002, NOT_VALID);
    let unknown_id = mint("7=env:TEST_KEY_NEW", &target, &[]);
    assert_refused(ended(&gw, token_hello(&unknown_id)), 4002, NOT_VALID);

    // Longer-lived than the gateway allows (the minter allows 5m, this gateway 2m).
    let long = mint("2=env:TEST_KEY_NEW", &target, &["--ttl", "5m"]);
    assert_refused(
        ended(&gw, token_hello(&long)),
        4002,
        "the connection token lives longer than this gateway allows (2m)",
    );

    // The refused tokens took nothing: the good one still works once.
    frames_arrive(&gw, token_hello(&good), 1);

    // Too large: refused before it is decoded, as a malformed message.
    let (_, code, reason) = ended(&gw, token_hello(&"A".repeat(5000)));
    assert_eq!(code, 1002);
    assert!(
        reason.contains("token is 5000 bytes, longer than 4096"),
        "{reason}"
    );

    // A gateway without keys says so.
    let plain = Gateway::start(&["--cores", "1"]);
    assert_refused(
        ended(&plain, token_hello(&good)),
        4002,
        "connection tokens are not enabled on this gateway",
    );
    assert_eq!(
        gw.metrics()
            .get("rdpwire_connection_tokens_total{result=\"refused\"}"),
        7
    );
}

/// A loopback port that records whether anything connected to it.
struct Tripwire(TcpListener);

impl Tripwire {
    fn new() -> Tripwire {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Tripwire(l)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
    #[track_caller]
    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the gateway connected to a refused target: {other:?}"),
        }
    }
}

/// A gateway with the default target policy (the test support's loopback allow removed),
/// token keys, and named targets `local` (the name `localhost`) and `loop` (127.0.0.1), both
/// at `port`.
fn strict_gateway(port: u16, args: &[&str]) -> (Gateway, TempDir) {
    let dir = std::env::temp_dir().join(format!("rdpwire-policy-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    let mut toml = String::new();
    for (name, host) in [("local", "localhost"), ("loop", "127.0.0.1")] {
        toml.push_str(&format!(
            "[targets.{name}]\nhost = \"{host}\"\nport = {port}\nusername = \"{USER}\"\n\
             password_env = \"TEST_RDP_PASSWORD\"\ntls = \"insecure\"\n"
        ));
    }
    std::fs::write(&file, toml).unwrap();
    let mut cmd = with_keys(Command::new(BIN));
    cmd.env_remove(TARGET_ALLOW_ENV);
    let mut all = vec![
        "--cores",
        "1",
        "--token-keys",
        GATEWAY_KEYS,
        "--config",
        file.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    (Gateway::start_with(cmd, &all), TempDir(dir))
}

fn named(target: &str) -> FromBrowser {
    FromBrowser::ClientHello {
        width: 1024,
        height: 768,
        target: target.into(),
    }
}

#[test]
fn the_target_policy_refuses_before_connecting_for_names_and_tokens_alike() {
    let trip = Tripwire::new();
    let port = trip.port();
    let (gw, _dir) = strict_gateway(port, &[]);

    // A DNS name resolving to loopback, which is denied by default. The system resolver may
    // answer ::1 or 127.0.0.1 first; either is loopback.
    let (reason, code, close) = ended(&gw, named("local"));
    assert_eq!(code, 4003, "{reason}");
    assert_eq!(reason, close);
    assert!(
        reason.starts_with(&format!(
            "the target localhost:{port} is not allowed: localhost resolves to "
        )) && reason.ends_with(", a loopback address"),
        "{reason}"
    );
    assert_refused(
        ended(&gw, named("loop")),
        4003,
        &format!("the target 127.0.0.1:{port} is not allowed: 127.0.0.1 is a loopback address"),
    );
    // The same for a token: a good token for a refused target is refused for its target.
    let token = mint("2=env:TEST_KEY_NEW", &format!("localhost:{port}"), &[]);
    let (reason, code, _) = ended(&gw, token_hello(&token));
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("a loopback address"), "{reason}");
    let token = mint("2=env:TEST_KEY_NEW", &format!("127.0.0.1:{port}"), &[]);
    assert_refused(
        ended(&gw, token_hello(&token)),
        4003,
        &format!("the target 127.0.0.1:{port} is not allowed: 127.0.0.1 is a loopback address"),
    );
    trip.assert_untouched();
    assert_eq!(gw.metrics().get("rdpwire_targets_refused_total"), 4);
    drop(gw);

    // An allowlist of other networks does not open loopback, and a host name on it does not
    // either: only a network inside the loopback range would.
    let (gw, _dir2) = strict_gateway(port, &["--target-allow", "10.0.0.0/8,localhost"]);
    let (reason, code, _) = ended(&gw, named("local"));
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("a loopback address"), "{reason}");
    trip.assert_untouched();
    drop(gw);

    // Loopback allowed, but only port 3389, and never the gateway itself.
    let (gw, _dir3) = strict_gateway(
        port,
        &["--target-allow", "127.0.0.1/32", "--target-ports", "3389"],
    );
    assert_refused(
        ended(&gw, named("loop")),
        4003,
        &format!(
            "the target 127.0.0.1:{port} is not allowed: port {port} is not one of the ports this gateway connects to"
        ),
    );
    trip.assert_untouched();
    drop(gw);
    let (gw, _dir4) = strict_gateway(port, &["--target-allow", "127.0.0.1/32"]);
    let me = gw.addr;
    let token = mint("2=env:TEST_KEY_NEW", &me.to_string(), &[]);
    assert_refused(
        ended(&gw, token_hello(&token)),
        4003,
        &format!("the target {me} is not allowed: {me} is this gateway itself"),
    );
}

#[test]
fn the_default_target_policy_still_lets_a_named_target_through_when_allowed() {
    // The same strict gateway with the demo desktop's exact address allowed: a named target
    // reaches it (the allowlist is applied to names, not only to tokens).
    let server = demo_server();
    let (gw, _dir) = strict_gateway(server.addr().port(), &["--target-allow", "127.0.0.1/32"]);
    frames_arrive(&gw, named("loop"), 1);
}

/// The Python example of docs/security.md, as written there.
fn python_example() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap();
    let start = doc
        .find("```python\n")
        .expect("docs/security.md has a Python example");
    let body = &doc[start + "```python\n".len()..];
    body[..body.find("```").unwrap()].to_owned()
}

/// `python3` with the `cryptography` package, installed with pip when missing; `None` when
/// this machine has no Python at all.
fn python_with_cryptography() -> Option<&'static str> {
    let has = |code: &str| {
        Command::new("python3")
            .args(["-c", code])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("import sys") {
        return None;
    }
    if !has("import cryptography") {
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "cryptography"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip could not install cryptography");
    }
    Some("python3")
}

#[test]
fn a_token_minted_by_the_documented_python_example_works() {
    let Some(python) = python_with_cryptography() else {
        eprintln!("skipped: no python3 on this machine");
        return;
    };
    let server = demo_server();
    let gw = gateway(&[]);
    let dir = std::env::temp_dir().join(format!("rdpwire-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let script = dir.join("mint.py");
    std::fs::write(&script, python_example()).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .args(["127.0.0.1", &server.addr().port().to_string(), USER])
        .env("RDPWIRE_KEY_ID", "2")
        .env("RDPWIRE_KEY_HEX", KEY_NEW)
        .env("RDP_PASSWORD", PASSWORD)
        .env("RDP_TLS", "insecure")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let states = frames_arrive(&gw, token_hello(&token), 1);
    assert!(states.contains(&"connected".to_owned()), "{states:?}");
    assert_refused(
        ended(&gw, token_hello(&token)),
        4002,
        "the connection token was already used",
    );
}

#[test]
fn rdpwire_token_explains_what_is_missing() {
    let run = |args: &[&str]| {
        let out = with_keys(Command::new(BIN))
            .arg("token")
            .args(args)
            .env_remove("RDPWIRE_TOKEN_KEYS")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8(out.stderr).unwrap()
    };
    let base = ["--target", "rdp.example:3389", "--user", "u"];
    let e = run(&[&base[..], &["--password-env", "TEST_RDP_PASSWORD"]].concat());
    assert!(e.contains("no token key is configured"), "{e}");
    let e = run(&[
        &base[..],
        &[
            "--password-env",
            "NOPE_NOT_SET",
            "--token-keys",
            "1=env:TEST_KEY_NEW",
        ],
    ]
    .concat());
    assert!(e.contains("NOPE_NOT_SET is not set"), "{e}");
    let e = run(&[
        &base[..],
        &[
            "--password-env",
            "TEST_RDP_PASSWORD",
            "--token-keys",
            "1=env:MISSING_KEY",
        ],
    ]
    .concat());
    assert!(e.contains("MISSING_KEY is not set"), "{e}");
}
