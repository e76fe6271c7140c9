//! What the deployment files promise, checked against the real binary outside a container
//! (no Docker engine runs on these machines).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/browser.rs"]
mod browser;
mod support;
#[path = "support/tone.rs"]
mod tone;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::Gateway;

/// Docker's default capability set: profile entries that need any other capability do not
/// apply to a container started without `--cap-add`.
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Linux's "function not implemented": libc falls back to an older call when it gets it.
const ENOSYS: u64 = 38;

/// System calls the shipped profile lets a default container on x86-64 make, by name, or
/// answers with ENOSYS so that libc falls back (Docker does this for `clone3`, and `clone` is
/// allowed). Entries whose arguments are restricted count as allowed (the gateway's calls are
/// ordinary ones: threads, not namespaces).
fn allowed_by(profile: &Value) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for entry in profile["syscalls"].as_array().unwrap() {
        let falls_back = entry["action"] == "SCMP_ACT_ERRNO" && entry["errnoRet"] == ENOSYS;
        if entry["action"] != "SCMP_ACT_ALLOW" && !falls_back {
            continue;
        }
        let includes = &entry["includes"];
        let caps_ok = includes["caps"].as_array().is_none_or(|caps| {
            caps.iter()
                .all(|c| DOCKER_DEFAULT_CAPS.contains(&c.as_str().unwrap()))
        });
        let arch_ok = includes["arches"]
            .as_array()
            .is_none_or(|a| a.iter().any(|x| x == "amd64" || x == "x86_64"));
        if caps_ok && arch_ok {
            for n in entry["names"].as_array().unwrap() {
                allowed.insert(n.as_str().unwrap().to_owned());
            }
        }
    }
    allowed
}

/// The system call names in an `strace -f` log.
fn traced(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            if call.starts_with('<') || call.starts_with("+++") || call.starts_with("---") {
                return None;
            }
            let name = call.split('(').next()?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn the_shipped_seccomp_profile_allows_what_the_gateway_does() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/deploy/seccomp-io-uring.json"
    );
    let profile: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let io_uring = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["names"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "io_uring_setup")
        })
        .expect("no io_uring entry");
    assert_eq!(io_uring["action"], "SCMP_ACT_ALLOW");
    assert!(io_uring.get("args").is_none() && io_uring.get("includes").is_none());
    let allowed = allowed_by(&profile);
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "clone",
    ] {
        assert!(allowed.contains(call), "{call}");
    }

    // The gateway serving a demo session with picture and sound, every system call recorded.
    let log = std::env::temp_dir().join(format!("rdpwire-strace-{}.log", std::process::id()));
    let mut strace = Command::new("strace");
    strace.arg("-f").arg("-qq").arg("-o").arg(&log);
    let mut gw = Gateway::start_sub(strace, "demo", &["--cores", "1"]);
    let mut ws = gw.ws().unwrap();
    let mut heard = browser::connect(&gw, &mut ws);
    browser::key(&mut ws, browser::F9);
    browser::listen(&mut ws, &gw, Duration::from_millis(1500), &mut heard);
    browser::ping(&mut ws, &gw, 1, &mut heard);
    assert!(heard.frames > 0 && !heard.packets.is_empty());
    ws.close();
    let metrics = gw.metrics();
    assert!(metrics.get("rdpwire_sessions_total") >= 1);
    // The child is strace; the gateway is its child.
    let strace_pid = gw.child.id();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let gateway_pid = children.split_whitespace().next().unwrap().to_owned();
    assert!(Command::new("kill")
        .args(["-s", "TERM", &gateway_pid])
        .status()
        .unwrap()
        .success());
    gw.wait_exit(Duration::from_secs(20));
    let calls = traced(&std::fs::read_to_string(&log).unwrap());
    let _ = std::fs::remove_file(&log);
    assert!(calls.len() > 20, "strace saw only {calls:?}");
    let refused: Vec<_> = calls.difference(&allowed).collect();
    println!(
        "{} distinct system calls, all allowed: {calls:?}",
        calls.len()
    );
    assert!(
        refused.is_empty(),
        "the shipped profile would refuse {refused:?}"
    );
}
