use std::fmt;

/// The three pools an arena is carved into, named at run time (stats, errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// Encoded video frame data on its way to the browser.
    FrameChunk,
    /// Small per-surface metadata.
    SurfaceDesc,
    /// Audio sample buffers.
    AudioBuf,
}

impl Pool {
    /// Every pool, in region order, for iterating stats without forgetting one.
    pub const ALL: [Pool; 3] = [Pool::FrameChunk, Pool::SurfaceDesc, Pool::AudioBuf];

    /// Stable snake_case name, suitable as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Pool::FrameChunk => "frame_chunk",
            Pool::SurfaceDesc => "surface_desc",
            Pool::AudioBuf => "audio_buf",
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Type-level name of the frame chunk pool, so `Slot<FrameChunk>` cannot pose as another kind.
#[derive(Debug)]
pub enum FrameChunk {}
/// Type-level name of the surface descriptor pool.
#[derive(Debug)]
pub enum SurfaceDesc {}
/// Type-level name of the audio buffer pool.
#[derive(Debug)]
pub enum AudioBuf {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::FrameChunk {}
    impl Sealed for super::SurfaceDesc {}
    impl Sealed for super::AudioBuf {}
}

/// Links a marker type to its pool. Sealed: the arena has exactly three pools and a foreign
/// implementation could not be backed by memory.
pub trait PoolKind: sealed::Sealed {
    /// The pool this marker stands for.
    const KIND: Pool;
}

impl PoolKind for FrameChunk {
    const KIND: Pool = Pool::FrameChunk;
}
impl PoolKind for SurfaceDesc {
    const KIND: Pool = Pool::SurfaceDesc;
}
impl PoolKind for AudioBuf {
    const KIND: Pool = Pool::AudioBuf;
}

/// One value per pool, looked up by `match` so no lookup can go out of bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PerPool<T> {
    frame_chunk: T,
    surface_desc: T,
    audio_buf: T,
}

impl<T> PerPool<T> {
    pub(crate) fn from_fn(mut f: impl FnMut(Pool) -> T) -> Self {
        PerPool {
            frame_chunk: f(Pool::FrameChunk),
            surface_desc: f(Pool::SurfaceDesc),
            audio_buf: f(Pool::AudioBuf),
        }
    }

    pub(crate) fn try_from_fn<E>(mut f: impl FnMut(Pool) -> Result<T, E>) -> Result<Self, E> {
        Ok(PerPool {
            frame_chunk: f(Pool::FrameChunk)?,
            surface_desc: f(Pool::SurfaceDesc)?,
            audio_buf: f(Pool::AudioBuf)?,
        })
    }

    pub(crate) fn get(&self, pool: Pool) -> &T {
        match pool {
            Pool::FrameChunk => &self.frame_chunk,
            Pool::SurfaceDesc => &self.surface_desc,
            Pool::AudioBuf => &self.audio_buf,
        }
    }
}
