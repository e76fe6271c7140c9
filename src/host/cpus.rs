//! The CPUs this process may run on. The affinity mask is what `taskset`, a cgroup cpuset and
//! `docker --cpuset-cpus` all end up setting, so it is the one source of truth; counting
//! `/proc/cpuinfo` or `nproc --all` would put executors on CPUs the process cannot use.

use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read this process's CPU affinity mask: {0}")]
    Affinity(nix::Error),
    #[error("the affinity mask allows no CPU")]
    Empty,
    #[error("--cores {requested} asks for more executors than the {allowed} CPUs this process may run on ({list})")]
    TooMany {
        requested: usize,
        allowed: usize,
        list: String,
    },
}

/// CPUs in the affinity mask, ascending.
pub fn allowed() -> Result<Vec<usize>, CpuError> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(CpuError::Affinity)?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect();
    if cpus.is_empty() {
        return Err(CpuError::Empty);
    }
    Ok(cpus)
}

/// The first `cores` allowed CPUs, or all of them.
pub fn select(allowed: &[usize], cores: Option<usize>) -> Result<Vec<usize>, CpuError> {
    match cores {
        None => Ok(allowed.to_vec()),
        Some(n) if n <= allowed.len() => Ok(allowed[..n].to_vec()),
        Some(n) => Err(CpuError::TooMany {
            requested: n,
            allowed: allowed.len(),
            list: format_list(allowed),
        }),
    }
}

/// `0-3,6` style, as taskset and cpuset files write it.
pub fn format_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(format_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format_list(&[5]), "5");
    }

    #[test]
    fn selection() {
        assert_eq!(select(&[2, 5, 7], Some(2)).unwrap(), vec![2, 5]);
        assert_eq!(select(&[2, 5], None).unwrap(), vec![2, 5]);
        let e = select(&[0, 1], Some(3)).unwrap_err().to_string();
        assert!(e.contains("--cores 3") && e.contains("0-1"), "{e}");
    }

    #[test]
    fn this_process_has_cpus() {
        assert!(!allowed().unwrap().is_empty());
    }
}
