//! The foundation, end to end: the real binary, real sockets, real WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{eventually, http_raw, plan, read_reply, Gateway, BIN};

fn allowed_cpus() -> usize {
    rdpwire::host::cpus::allowed().unwrap().len()
}

#[test]
fn executors_follow_affinity_and_cores_flag() {
    let all = Gateway::start(&[]);
    assert_eq!(
        all.metrics().get("rdpwire_executors") as usize,
        allowed_cpus()
    );

    let one = Gateway::start(&["--cores", "1"]);
    assert_eq!(one.metrics().get("rdpwire_executors"), 1);

    let mut taskset = Command::new("taskset");
    taskset.args(["-c", "0"]);
    let pinned = Gateway::start_with(taskset, &[]);
    assert_eq!(pinned.metrics().get("rdpwire_executors"), 1);
    assert!(pinned
        .log_text()
        .contains("executors: 1 on CPUs 0 (allowed: 0)"));

    let out = Command::new("taskset")
        .args(["-c", "0", BIN, "check-config", "--cores", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cores 2") && err.contains("1 CPUs"), "{err}");
}

#[test]
fn health_ready_metrics_and_static_page() {
    let gw = Gateway::start(&["--memory-budget", "256MiB", "--cores", "1"]);
    let h = gw.get("/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = gw.get("/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let page = gw.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<canvas id=\"screen\">"));
    assert_eq!(gw.get("/rdpwire.js").status, 200);
    assert_eq!(gw.get("/no-such-thing").status, 404);

    let p = plan(&["--memory-budget", "256MiB", "--cores", "1"]);
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_memory_budget_bytes"), 256 << 20);
    assert_eq!(
        m.get("rdpwire_sessions_capacity"),
        p["max_sessions"].as_u64().unwrap()
    );
    assert_eq!(m.get("rdpwire_sessions_active"), 0);
    assert_eq!(
        m.get("rdpwire_pool_slots{pool=\"frame_chunk\",state=\"capacity\"}"),
        p["max_sessions"].as_u64().unwrap() * 16
    );
    // Three requests before this one had complete heads (the 404 included).
    assert!(m.get("rdpwire_http_requests_total") >= 6);

    let post = http_raw(
        gw.addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow").as_deref(), Some("GET, HEAD"));
}

/// Budget for exactly `n` sessions on one core, from the gateway's own plan.
fn exact_budget(n: u64) -> String {
    let p = plan(&["--cores", "1", "--memory-budget", "1GiB"]);
    let base = p["base_bytes"].as_u64().unwrap();
    let per = p["per_session_bytes"].as_u64().unwrap();
    (base + n * per).to_string()
}

#[test]
fn budget_admits_exactly_n_and_refuses_the_next_cleanly() {
    let budget = exact_budget(3);
    let gw = Gateway::start(&["--cores", "1", "--memory-budget", &budget]);
    assert_eq!(gw.metrics().get("rdpwire_sessions_capacity"), 3);

    let mut sessions: Vec<_> = (0..3).map(|_| gw.ws().unwrap()).collect();
    let ids: Vec<u64> = sessions.iter_mut().map(|s| s.hello().0).collect();
    assert_eq!(ids.len(), 3);

    match gw.ws() {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "5");
            let body = String::from_utf8(resp.body().clone().unwrap()).unwrap();
            assert!(body.starts_with("full: all 3 session slots"), "{body}");
            assert_eq!(body.lines().count(), 1);
        }
        other => panic!("fourth session was not refused: {:?}", other.map(|_| ())),
    }
    let ready = gw.get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.body.starts_with("full"), "{}", ready.body);

    // The three keep working.
    for (i, s) in sessions.iter_mut().enumerate() {
        s.ping(100 + i as u64);
    }
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_sessions_active"), 3);
    assert_eq!(m.get("rdpwire_sessions_refused_total"), 1);
    assert_eq!(
        m.get("rdpwire_pool_slots{pool=\"frame_chunk\",state=\"reserved\"}"),
        48
    );
    assert!(m.get("rdpwire_pool_slots{pool=\"frame_chunk\",state=\"high_water\"}") >= 1);
    assert!(m.get("rdpwire_bytes_total{direction=\"browser_out\"}") >= 3 * (16 + 10));

    for s in sessions {
        s.close();
    }
    assert!(eventually(Duration::from_secs(5), || {
        gw.metrics().get("rdpwire_sessions_active") == 0
    }));
    let m = gw.metrics();
    for pool in ["frame_chunk", "surface_desc", "audio_buf"] {
        for state in ["in_use", "reserved"] {
            assert_eq!(
                m.get(&format!(
                    "rdpwire_pool_slots{{pool=\"{pool}\",state=\"{state}\"}}"
                )),
                0,
                "{pool} {state}"
            );
        }
    }
    assert_eq!(gw.get("/readyz").status, 200);
    // A slot freed by a closed session is admitted again.
    let mut again = gw.ws().unwrap();
    again.hello();
    again.ping(7);
}

#[test]
fn max_sessions_lowers_the_cap() {
    let gw = Gateway::start(&["--cores", "1", "--max-sessions", "1"]);
    let mut a = gw.ws().unwrap();
    a.hello();
    assert!(matches!(gw.ws(), Err(tungstenite::Error::Http(r)) if r.status() == 503));
    a.ping(1);
    assert!(gw.log_text().contains("lowered by --max-sessions"));
}

#[test]
fn oversize_message_closes_only_that_session_with_1009() {
    let gw = Gateway::start(&["--cores", "1", "--ws-max-message", "4KiB"]);
    let mut victim = gw.ws().unwrap();
    let mut neighbour = gw.ws().unwrap();
    victim.hello();
    neighbour.hello();
    victim
        .ws
        .send(tungstenite::Message::binary(vec![1u8; 64 * 1024]))
        .unwrap();
    let (code, reason) = victim.expect_close();
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("exceeds the limit of 4096"), "{reason}");
    neighbour.ping(42);
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_ws_oversize_closes_total"), 1);
    assert!(eventually(Duration::from_secs(5), || gw
        .metrics()
        .get("rdpwire_sessions_active")
        == 1));
}

#[test]
fn bad_browser_messages_close_that_session_with_a_reason() {
    let gw = Gateway::start(&["--cores", "1"]);
    let mut neighbour = gw.ws().unwrap();
    neighbour.hello();
    for (msg, code, words) in [
        (
            tungstenite::Message::binary(vec![1u8, 0x42]),
            1002,
            "unknown message type 0x42",
        ),
        (
            tungstenite::Message::binary(vec![9u8, 0x81]),
            1002,
            "protocol version 9",
        ),
        (
            tungstenite::Message::binary(vec![1u8, 0x81, 1, 2]),
            1002,
            "needs 10 bytes, got 4",
        ),
        (tungstenite::Message::text("hello"), 1003, "text messages"),
    ] {
        let mut s = gw.ws().unwrap();
        s.hello();
        s.ws.send(msg).unwrap();
        let (c, reason) = s.expect_close();
        assert_eq!(c, code, "{reason}");
        assert!(reason.contains(words), "{reason}");
        neighbour.ping(c as u64);
    }
}

#[test]
fn slow_and_malformed_http_get_4xx_and_hold_no_session_slot() {
    let gw = Gateway::start(&[
        "--cores",
        "1",
        "--max-sessions",
        "1",
        "--http-timeout",
        "500ms",
    ]);

    let garbage = http_raw(
        gw.addr,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    );
    assert_eq!(garbage.status, 400);
    assert!(
        garbage.body.starts_with("malformed request head"),
        "{}",
        garbage.body
    );

    let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 10_000));
    big.extend_from_slice(b"\r\n\r\n");
    let r = http_raw(gw.addr, &big);
    assert_eq!(r.status, 431, "{}", r.head);

    let bad_upgrade = http_raw(gw.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(bad_upgrade.status, 400);
    assert!(
        bad_upgrade.body.contains("invalid WebSocket upgrade"),
        "{}",
        bad_upgrade.body
    );

    // Slow clients: half a request head each, then silence.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr").unwrap();
            s
        })
        .collect();
    // The one session slot is still free while they dawdle.
    let mut ws = gw.ws().unwrap();
    ws.hello();
    for s in &mut slow {
        let r = read_reply(s);
        assert_eq!(r.status, 408, "{}", r.head);
        assert!(r.body.contains("no complete request head within"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    ws.ping(5);
    let m = gw.metrics();
    assert_eq!(m.get("rdpwire_http_rejected_total"), 3 + 4);
    assert_eq!(m.get("rdpwire_sessions_refused_total"), 0);
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let mut gw = Gateway::start(&["--cores", "1", "--drain-timeout", "20s"]);
    let mut s = gw.ws().unwrap();
    s.hello();
    gw.signal("TERM");
    assert!(eventually(Duration::from_secs(5), || gw
        .get("/readyz")
        .status
        == 503));
    assert!(gw.get("/readyz").body.starts_with("draining"));
    match gw.ws() {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body = String::from_utf8(resp.body().clone().unwrap()).unwrap();
            assert!(body.starts_with("draining"), "{body}");
        }
        other => panic!(
            "upgrade during drain was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // The running session is untouched by the drain.
    s.ping(3);
    assert!(gw.child.try_wait().unwrap().is_none());
    s.close();
    let status = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}

#[test]
fn drain_timeout_closes_sessions_with_going_away() {
    let mut gw = Gateway::start(&["--cores", "1", "--drain-timeout", "300ms"]);
    let mut s = gw.ws().unwrap();
    s.hello();
    let t = Instant::now();
    gw.signal("INT");
    let (code, reason) = s.expect_close();
    assert_eq!(code, 1001);
    assert!(reason.contains("shutting down"), "{reason}");
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn second_signal_exits_at_once() {
    let mut gw = Gateway::start(&["--cores", "1", "--drain-timeout", "60s"]);
    let mut s = gw.ws().unwrap();
    s.hello();
    gw.signal("TERM");
    assert!(eventually(Duration::from_secs(5), || gw
        .get("/readyz")
        .status
        == 503));
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
}

#[test]
fn bad_configuration_is_refused_with_key_value_and_reason() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--memory-budget", "lots"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("memory.budget = \"lots\" (from the command line): not a size"),
        "{err}"
    );

    let (code, err) = run(&[], &[("RDPWIRE_MAX_SESSIONS", "0")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("memory.max_sessions = \"0\" (from the environment): must be between 1"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("rdpwire-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    std::fs::write(&file, "[server]\ndrain_timeout = \"forever\"\n").unwrap();
    let (code, err) = run(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("server.drain_timeout = \"forever\" (from "),
        "{err}"
    );
    assert!(err.contains("not a duration"), "{err}");

    std::fs::write(&file, "[memory]\nbudgt = \"1GiB\"\n").unwrap();
    let (_, err) = run(&["--config", file.to_str().unwrap()], &[]);
    assert!(err.contains("unknown key \"memory.budgt\""), "{err}");

    let (code, err) = run(&["--memory-budget", "4MiB"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not fit one session"), "{err}");
}

#[test]
fn io_uring_setup_failure_explains_the_fix() {
    // A memlock limit below glommio's minimum is one of the two ways containers break io_uring.
    let out = Command::new("prlimit")
        .args([
            "--memlock=0:0",
            BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("io_uring could not be set up"), "{err}");
    assert!(err.contains("memlock limit (RLIMIT_MEMLOCK)"), "{err}");
    assert!(err.contains("--ulimit memlock="), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Set in the environment of the helper below when it should act.
const SECCOMP_HELPER: &str = "RDPWIRE_TEST_SECCOMP_EXEC";

#[test]
fn io_uring_blocked_by_seccomp_explains_the_fix() {
    // Re-run this test binary as the helper: it installs the filter and execs the gateway.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "seccomp_exec_helper", "--nocapture"])
        .env(SECCOMP_HELPER, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("io_uring could not be set up"), "{err}");
    assert!(err.contains("seccomp profile blocks them"), "{err}");
    assert!(err.contains("--security-opt seccomp="), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs the gateway with the io_uring system calls failing with EPERM, exactly as under
/// Docker's default seccomp profile. Only acts when started by the test above.
#[test]
#[ignore = "helper process of io_uring_blocked_by_seccomp_explains_the_fix"]
fn seccomp_exec_helper() {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    use std::os::unix::process::CommandExt;
    if std::env::var_os(SECCOMP_HELPER).is_none() {
        return;
    }
    let rules = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::try_from(std::env::consts::ARCH).unwrap(),
    )
    .unwrap();
    let program = BpfProgram::try_from(filter).unwrap();
    seccompiler::apply_filter(&program).unwrap();
    let err = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .env_remove(SECCOMP_HELPER)
        .exec();
    panic!("exec failed: {err}");
}

#[test]
fn prefault_makes_the_arena_resident_at_start() {
    let args = ["--cores", "1", "--memory-budget", "64MiB"];
    let lazy = Gateway::start(&args);
    let mut with = args.to_vec();
    with.push("--prefault");
    let eager = Gateway::start(&with);
    let arena = (plan(&args)["max_sessions"].as_u64().unwrap())
        * plan(&args)["per_session"]["pools"].as_u64().unwrap();
    let (l, e) = (
        support::proc_status_bytes(lazy.child.id(), "VmRSS"),
        support::proc_status_bytes(eager.child.id(), "VmRSS"),
    );
    assert!(e >= l + arena * 9 / 10, "lazy {l} eager {e} arena {arena}");
}

#[test]
fn mlock_beyond_the_memlock_limit_is_a_clear_start_up_error() {
    // Root may lock without limit (CAP_IPC_LOCK): drop the capability so the limit applies.
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-ipc_lock",
            "prlimit",
            "--memlock=4194304:4194304",
        ])
        .args(["timeout", "20", BIN, "serve", "--listen", "127.0.0.1:0"])
        .args(["--cores", "1", "--memory-budget", "64MiB", "--mlock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot map the memory arena for CPU"), "{err}");
    assert!(err.contains("cannot lock"), "{err}");
    assert!(err.contains("Fix: raise the memlock limit"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn probe_reports_health_by_exit_status() {
    let gw = Gateway::start(&["--cores", "1"]);
    let run = |addr: &str, path: &str| {
        Command::new(BIN)
            .args(["probe", "--address", addr, "--path", path])
            .output()
            .unwrap()
    };
    let addr = gw.addr.to_string();
    assert!(run(&addr, "/healthz").status.success());
    let missing = run(&addr, "/nope");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let down = run(&closed, "/healthz");
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("refused"));
}

/// A WebSocket upgrade carrying `Origin`, as a browser's would.
fn ws_with_origin(gw: &Gateway, origin: &str) -> Result<(), (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("Origin", origin.parse().unwrap());
    match tungstenite::connect(req) {
        Ok(_) => Ok(()),
        Err(tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap(),
        )),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn only_allowed_origins_may_open_sessions() {
    let gw = Gateway::start(&["--cores", "1"]);
    let own = format!("http://{}", gw.addr);
    assert_eq!(ws_with_origin(&gw, &own), Ok(()));
    let (status, body) = ws_with_origin(&gw, "https://evil.example").unwrap_err();
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "origin https://evil.example is not allowed to open sessions on this gateway\n"
    );

    let portal = Gateway::start(&[
        "--cores",
        "1",
        "--allowed-origins",
        "https://portal.example",
    ]);
    assert_eq!(ws_with_origin(&portal, "https://portal.example"), Ok(()));
    assert_eq!(
        ws_with_origin(&portal, &format!("http://{}", portal.addr))
            .unwrap_err()
            .0,
        403
    );
    let m = portal.metrics();
    assert_eq!(m.get("rdpwire_sessions_refused_total"), 0);

    let out = Command::new(BIN)
        .args(["check-config", "--allowed-origins", "portal.example"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an origin"));
}

#[test]
fn a_silent_browser_is_closed_after_the_idle_timeout() {
    let gw = Gateway::start(&["--cores", "1", "--idle-timeout", "600ms"]);
    let mut silent = gw.ws().unwrap();
    let mut talking = gw.ws().unwrap();
    silent.hello();
    talking.hello();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        talking.ping(n);
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, reason) = silent.expect_close();
    assert_eq!(code, 4001, "{reason}");
    assert!(
        reason.ends_with("no message from the browser for 600ms"),
        "{reason}"
    );
    talking.ping(999);
    assert!(eventually(Duration::from_secs(5), || {
        gw.metrics().get("rdpwire_sessions_active") == 1
    }));
}
