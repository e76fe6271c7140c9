//! The cgroup v2 memory limit that applies to this process: the smallest `memory.max` on the
//! path from its cgroup to the root (a parent's limit binds the child too).

use std::path::{Path, PathBuf};

/// The cgroup v2 path of this process from `/proc/self/cgroup` (the `0::` line).
pub fn own_path(proc_self_cgroup: &str) -> Option<PathBuf> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim()))
}

/// `memory.max` content: a byte count, or `max` for no limit.
pub fn parse_memory_max(s: &str) -> Option<u64> {
    match s.trim() {
        "max" | "" => None,
        v => v.parse().ok(),
    }
}

/// The tightest limit from `root/<path>` up to `root`, reading with `read`.
pub fn effective_limit(
    root: &Path,
    path: &Path,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    let mut dir = root.join(path.strip_prefix("/").unwrap_or(path));
    let mut best: Option<u64> = None;
    loop {
        if let Some(limit) = read(&dir.join("memory.max"))
            .as_deref()
            .and_then(parse_memory_max)
        {
            best = Some(best.map_or(limit, |b| b.min(limit)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    best
}

/// The limit for this process on this host, if any.
pub fn memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own_path(&own)?;
    effective_limit(Path::new("/sys/fs/cgroup"), &path, |p| {
        std::fs::read_to_string(p).ok()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn parses_proc_self_cgroup() {
        assert_eq!(
            own_path("0::/system.slice/rdpwire.service\n"),
            Some(PathBuf::from("/system.slice/rdpwire.service"))
        );
        assert_eq!(own_path("1:name=systemd:/x\n"), None);
    }

    #[test]
    fn memory_max_values() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536870912));
    }

    #[test]
    fn tightest_ancestor_wins() {
        let files: HashMap<PathBuf, &str> = [
            ("/cg/memory.max", "max"),
            ("/cg/a/memory.max", "1000"),
            ("/cg/a/b/memory.max", "5000"),
        ]
        .into_iter()
        .map(|(k, v)| (PathBuf::from(k), v))
        .collect();
        let read = |p: &Path| files.get(p).map(|s| s.to_string());
        assert_eq!(
            effective_limit(Path::new("/cg"), Path::new("/a/b"), read),
            Some(1000)
        );
        assert_eq!(
            effective_limit(Path::new("/cg"), Path::new("/"), read),
            None
        );
    }
}
