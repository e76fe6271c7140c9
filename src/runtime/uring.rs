//! A preflight check of io_uring before glommio touches it: glommio panics when the kernel
//! refuses part of its set-up, and a blocked system call deserves a sentence, not a backtrace.

use super::RuntimeError;

/// Creates a tiny ring and asks the kernel which operations it supports, the two things
/// glommio does first. Any refusal comes back as the error that explains the fix.
pub fn preflight(cpu: usize) -> Result<(), RuntimeError> {
    let fail = |detail: String| RuntimeError::IoUring { cpu, detail };
    let ring = io_uring::IoUring::new(2).map_err(|e| fail(format!("io_uring_setup: {e}")))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| fail(format!("io_uring_register: {e}")))?;
    Ok(())
}
