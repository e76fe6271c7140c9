use std::io;
use std::ptr::NonNull;

use memmap2::{MmapMut, MmapOptions, MmapRaw};

use crate::config::{ArenaConfig, PAGE};
use crate::error::ArenaError;

/// The one mapping behind an arena.
///
/// Kept as [`MmapRaw`] after set-up because it never hands out references to its interior:
/// the only references into the region are the disjoint slices of live [`crate::Slot`]s.
pub(crate) struct Region {
    /// `None` for an arena that admits nobody: the kernel refuses zero-length maps.
    map: Option<MmapRaw>,
    huge_pages: bool,
    /// Prefaulted or locked on request: the operator wants it resident, so it is never given
    /// back.
    keep_resident: bool,
}

impl Region {
    pub(crate) fn map(bytes: usize, cfg: &ArenaConfig) -> Result<Region, ArenaError> {
        if bytes == 0 {
            return Ok(Region {
                map: None,
                huge_pages: false,
                keep_resident: true,
            });
        }
        let mut opts = MmapOptions::new();
        opts.len(bytes);
        // MAP_POPULATE would back the region with small pages before the huge-page advice
        // could matter, so with huge pages wanted we advise first and fault in afterwards.
        let populate_at_map = cfg.prefault && !cfg.huge_pages;
        if populate_at_map {
            opts.populate();
        }
        let mut map = opts
            .map_anon()
            .map_err(|source| ArenaError::Map { bytes, source })?;
        let huge_pages = cfg.huge_pages && advise_huge_pages(&map);
        if cfg.prefault && !populate_at_map {
            fault_in(&mut map);
        }
        let map = MmapRaw::from(map);
        if cfg.mlock {
            lock(&map).map_err(|source| ArenaError::Lock { bytes, source })?;
        }
        Ok(Region {
            map: Some(map),
            huge_pages,
            keep_resident: cfg.prefault || cfg.mlock,
        })
    }

    /// Gives the pages back to the kernel (they read as zeros when next touched), so a gateway
    /// whose sessions have all ended returns to its base memory. Only called when no share —
    /// and so no slot — is left: nothing refers into the region.
    #[allow(unsafe_code)]
    pub(crate) fn release_pages(&self) {
        let Some(map) = self.map.as_ref().filter(|_| !self.keep_resident) else {
            return;
        };
        // SAFETY: MADV_DONTNEED on a private anonymous mapping replaces its pages with zero
        // pages; it changes what the memory holds, which `unchecked_advise` leaves to the
        // caller. The caller guarantees no `Slot` (the only way to reach the region's bytes)
        // is alive, and slots are documented to start with unspecified contents, so the next
        // holder writes before it reads either way. The mapping itself stays valid.
        let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }

    /// Start of the region; `None` when nothing is mapped.
    pub(crate) fn base(&self) -> Option<NonNull<u8>> {
        self.map.as_ref().and_then(|m| NonNull::new(m.as_mut_ptr()))
    }

    pub(crate) fn len(&self) -> usize {
        self.map.as_ref().map_or(0, MmapRaw::len)
    }

    pub(crate) fn huge_pages_active(&self) -> bool {
        self.huge_pages
    }
}

/// Only tells whether the kernel accepted the advice (it fails without
/// `CONFIG_TRANSPARENT_HUGEPAGE`); finding out whether huge pages were really used would take
/// reading `/proc`, which the arena does not do.
#[cfg(target_os = "linux")]
fn advise_huge_pages(map: &MmapMut) -> bool {
    map.advise(memmap2::Advice::HugePage).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_map: &MmapMut) -> bool {
    false
}

/// A write (not a read, which would map the shared zero page) to every page makes the kernel
/// back each one now rather than on the first frame.
fn fault_in(map: &mut MmapMut) {
    for page in map.chunks_mut(PAGE) {
        if let Some(first) = page.first_mut() {
            *first = 0;
        }
    }
}

#[cfg(unix)]
fn lock(map: &MmapRaw) -> io::Result<()> {
    map.lock()
}

#[cfg(not(unix))]
fn lock(_map: &MmapRaw) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}
