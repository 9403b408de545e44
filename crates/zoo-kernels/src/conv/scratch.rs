//! Per-thread working buffers for the convolutions (columns, gathered gradients, Winograd
//! tiles), reused from op to op instead of allocated and zeroed each time.

/// A per-thread working buffer (columns, gathered gradients) taken from, and on drop given back
/// to, the thread's pool: convolutions run every step with the same sizes, so after the first
/// step no buffer is allocated or zeroed. Its contents on taking are unspecified: every user
/// writes each element it reads.
pub(crate) struct Scratch(Vec<f32>);

thread_local! {
    static SCRATCH_POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers a thread keeps for reuse.
const SCRATCH_KEPT: usize = 4;
/// Largest buffer kept (16 MiB of f32): the column matrices of large images (VGG at 224 px:
/// 115 MB) are allocated per call, where the allocation is small next to the work, rather than
/// held between ops.
const SCRATCH_MAX_KEPT_LEN: usize = 1 << 22;

impl Scratch {
    pub(crate) fn take(len: usize) -> Self {
        let reused = SCRATCH_POOL
            .try_with(|pool| {
                let mut pool = pool.try_borrow_mut().ok()?;
                let best = pool
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.capacity() >= len)
                    .min_by_key(|(_, v)| v.capacity())
                    .map(|(i, _)| i)
                    .or_else(|| (!pool.is_empty()).then_some(0))?;
                Some(pool.swap_remove(best))
            })
            .ok()
            .flatten();
        let mut v = reused.unwrap_or_default();
        v.truncate(len);
        v.resize(len, 0.0);
        Self(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        let _ = SCRATCH_POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut()
                && pool.len() < SCRATCH_KEPT
                && v.capacity() <= SCRATCH_MAX_KEPT_LEN
            {
                pool.push(v);
            }
        });
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}
