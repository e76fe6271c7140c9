//! The gateway under test: the real `rdpwire` binary as a child process, its memory plan
//! (`rdpwire check-config --json` with the same settings) and its `/metrics`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How to run the gateway: the same settings for `check-config` and `serve`.
#[derive(Clone)]
pub struct Settings {
    pub bin: PathBuf,
    pub config: Option<PathBuf>,
    pub cores: Option<usize>,
    pub memory_budget: Option<String>,
    /// Environment for the child (target passwords).
    pub env: Vec<(String, String)>,
}

impl Settings {
    fn shared_args(&self) -> Vec<String> {
        // Every synthetic browser connects from 127.0.0.1, so the limits per client address
        // would stop the ramp-up: they are off for load tests. The memory probe's sessions
        // never say hello and are held for the whole ramp.
        let mut args: Vec<String> = [
            "--max-upgrades-per-ip",
            "0",
            "--max-sessions-per-ip",
            "0",
            "--hello-timeout",
            "24h",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(c) = &self.config {
            args.push("--config".to_owned());
            args.push(c.display().to_string());
        }
        if let Some(n) = self.cores {
            args.push("--cores".to_owned());
            args.push(n.to_string());
        }
        if let Some(b) = &self.memory_budget {
            args.push("--memory-budget".to_owned());
            args.push(b.clone());
        }
        args
    }

    /// The plan `rdpwire check-config --json` prints for these settings.
    pub fn plan(&self) -> Result<Plan> {
        let out = Command::new(&self.bin)
            .arg("check-config")
            .arg("--json")
            .args(self.shared_args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .with_context(|| format!("running {} check-config", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "check-config failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let field = |k: &str| v[k].as_u64().with_context(|| format!("no {k} in the plan"));
        Ok(Plan {
            base_bytes: field("base_bytes")?,
            per_session_bytes: field("per_session_bytes")?,
            max_sessions: field("max_sessions")?,
            budget_bytes: field("budget_bytes")?,
            executors: v["cpus"].as_array().map_or(1, Vec::len),
            raw: v,
        })
    }

    pub fn start(&self) -> Result<Gateway> {
        let mut child = Command::new(&self.bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            // The harness's RDP servers are on loopback, which the target policy refuses
            // unless allowed.
            .args(["--target-allow", "127.0.0.1/32"])
            .args(self.shared_args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let log = Arc::new(Log::default());
        while Instant::now() < deadline {
            let Some(line) = lines.next() else { break };
            let line = line?;
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            log.take(&v, &line);
            if v["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("listening on")
            {
                let addr = v["addr"].as_str().context("no addr")?.to_owned();
                // Keep draining the log so the gateway never blocks on a full pipe.
                let drain = Arc::clone(&log);
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                        drain.take(&v, &line);
                    }
                });
                return Ok(Gateway { child, addr, log });
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("gateway did not start: {}", log.tail().join("\n"))
    }
}

/// The gateway's memory plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub base_bytes: u64,
    pub per_session_bytes: u64,
    pub max_sessions: u64,
    pub budget_bytes: u64,
    pub executors: usize,
    pub raw: serde_json::Value,
}

/// What the gateway logged: counts per level and the last warnings and errors.
#[derive(Default)]
pub struct Log {
    pub warnings: AtomicU64,
    pub errors: AtomicU64,
    last: Mutex<Vec<String>>,
}

impl Log {
    fn take(&self, v: &serde_json::Value, line: &str) {
        let level = v["level"].as_str().unwrap_or("");
        let keep = match level {
            "WARN" | "warn" => {
                self.warnings.fetch_add(1, Relaxed);
                true
            }
            "ERROR" | "error" => {
                self.errors.fetch_add(1, Relaxed);
                true
            }
            _ => v.is_null(),
        };
        if keep {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.len() >= 20 {
                last.remove(0);
            }
            last.push(line.chars().take(400).collect());
        }
    }

    pub fn tail(&self) -> Vec<String> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct Gateway {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Log>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has (e.g. killed by the OOM killer: signal 9).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// One GET; the status code and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status line")?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        Ok((status, body))
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Metrics::parse(&body))
    }

    /// Waits until the gateway reports no active session (at most `timeout`).
    pub fn wait_sessions(&self, at_most: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(m) = self.metrics() {
                if m.get("rdpwire_sessions_active") <= at_most as f64 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

/// Prometheus samples by full name (labels included, as printed).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// Samples of one metric, by their label text.
    pub fn series(&self, name: &str) -> Vec<(String, f64)> {
        let prefix = format!("{name}{{");
        let mut v: Vec<(String, f64)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix(&prefix)?.trim_end_matches('}').to_owned(),
                    *v,
                ))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_name_and_labels() {
        let m = Metrics::parse(
            "# HELP x y\nrdpwire_sessions_active 3\nrdpwire_bytes_total{direction=\"browser_out\"} 1200\nrdpwire_core_sessions_active{cpu=\"0\"} 2\nrdpwire_core_sessions_active{cpu=\"1\"} 1\n",
        );
        assert_eq!(m.get("rdpwire_sessions_active"), 3.0);
        assert_eq!(
            m.get("rdpwire_bytes_total{direction=\"browser_out\"}"),
            1200.0
        );
        assert_eq!(m.get("missing"), 0.0);
        assert_eq!(
            m.series("rdpwire_core_sessions_active"),
            vec![("cpu=\"0\"".to_owned(), 2.0), ("cpu=\"1\"".to_owned(), 1.0)]
        );
    }
}
