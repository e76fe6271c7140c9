//! A fault injected on purpose, compiled into debug builds only, so tests can show that a bug
//! in one session ends that session alone. Release builds carry no hook: this module and its
//! call sites exist only with `debug_assertions`.

/// A session whose page asks for a desktop this wide (in its hello or a resize) panics in its
/// task, when this variable is set. Unset, nothing happens.
pub const PANIC_WIDTH_ENV: &str = "RDPWIRE_DEBUG_PANIC_WIDTH";

/// Panics if `width` is the width the environment names.
// The panic is the point: the workspace denies `panic!`, and this is the one deliberate bug.
#[allow(clippy::panic)]
pub fn at_width(session: u64, width: u16) {
    let wanted = std::env::var(PANIC_WIDTH_ENV)
        .ok()
        .and_then(|v| v.parse::<u16>().ok());
    if wanted == Some(width) {
        panic!("session {session}: injected fault: desktop width {width} ({PANIC_WIDTH_ENV})");
    }
}
