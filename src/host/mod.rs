//! What the host allows this process: CPUs (affinity mask) and memory (cgroup v2 limit).
//! Read once at start-up; nothing here runs on an executor.

pub mod cgroup;
pub mod cpus;
