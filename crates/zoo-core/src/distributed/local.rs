//! The in-process backend: N ranks as N threads of one process, exchanging host vectors
//! through shared slots. It needs no engine, so tests can run any world size. Sums are taken
//! in f64, in rank order, so every rank gets bitwise the same result.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use candle_core::{Result, Tensor};

use super::{Collective, host_f64};

/// How long a rank waits for the others before the call fails (a rank that died or took
/// another path would otherwise leave the rest waiting for ever).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

struct Rendezvous {
    /// Each rank's contribution to the call in progress.
    slots: Vec<Option<Vec<f64>>>,
    /// Ranks arrived at the current barrier, and how many barriers have completed.
    arrived: usize,
    generation: u64,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<Rendezvous>,
    all_arrived: Condvar,
}

/// One rank's handle; [`ThreadGroup::new`] makes all of them.
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

/// Makes the handles of a group of ranks that run as threads.
pub struct ThreadGroup;

impl ThreadGroup {
    /// One handle per rank, `0..world`, to move into one thread each.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize) -> Result<Vec<ThreadCollective>> {
        Self::with_timeout(world, DEFAULT_TIMEOUT)
    }

    /// As [`ThreadGroup::new`], failing a call that waits longer than `timeout` for the others.
    pub fn with_timeout(world: usize, timeout: Duration) -> Result<Vec<ThreadCollective>> {
        if world == 0 {
            candle_core::bail!("a thread group needs at least one rank")
        }
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(Rendezvous {
                slots: vec![None; world],
                arrived: 0,
                generation: 0,
            }),
            all_arrived: Condvar::new(),
        });
        Ok((0..world)
            .map(|rank| ThreadCollective {
                rank,
                shared: shared.clone(),
            })
            .collect())
    }
}

impl ThreadCollective {
    /// Waits until every rank has arrived; `put` runs under the lock on arrival (to fill this
    /// rank's slot).
    fn wait_all(&self, what: &str, put: impl FnOnce(&mut Rendezvous)) -> Result<()> {
        let shared = &*self.shared;
        let mut state = shared
            .state
            .lock()
            .map_err(|_| candle_core::Error::msg(format!("{what}: another rank panicked")))?;
        put(&mut state);
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == shared.world {
            state.arrived = 0;
            state.generation += 1;
            shared.all_arrived.notify_all();
            return Ok(());
        }
        let (state, timeout) = shared
            .all_arrived
            .wait_timeout_while(state, shared.timeout, |s| s.generation == generation)
            .map_err(|_| candle_core::Error::msg(format!("{what}: another rank panicked")))?;
        if timeout.timed_out() && state.generation == generation {
            candle_core::bail!(
                "{what}: rank {} waited {:?} for the other {} ranks; one of them stopped or took \
                 another path",
                self.rank,
                shared.timeout,
                shared.world - 1
            )
        }
        Ok(())
    }

    /// Puts `data` in this rank's slot, waits for all, reads with `read`, waits again (so
    /// that no rank overwrites a slot that another is still reading).
    fn exchange<T>(
        &self,
        what: &str,
        data: Option<Vec<f64>>,
        read: impl FnOnce(&[Option<Vec<f64>>]) -> Result<T>,
    ) -> Result<T> {
        self.wait_all(what, |s| s.slots[self.rank] = data)?;
        let result = {
            let state =
                self.shared.state.lock().map_err(|_| {
                    candle_core::Error::msg(format!("{what}: another rank panicked"))
                })?;
            read(&state.slots)
        };
        self.wait_all(what, |_| {})?;
        result
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let what = "all-reduce (threads)";
        let data = host_f64(what, t)?;
        let sum = self.exchange(what, Some(data), |slots| {
            let mut parts = slots.iter().enumerate().map(|(r, s)| {
                s.as_deref().ok_or_else(|| {
                    candle_core::Error::msg(format!("{what}: rank {r} sent nothing"))
                })
            });
            let mut sum = parts.next().expect("world >= 1")?.to_vec();
            for (r, part) in parts.enumerate() {
                let part = part?;
                if part.len() != sum.len() {
                    candle_core::bail!(
                        "{what}: rank 0 sent {} values, rank {} sent {}",
                        sum.len(),
                        r + 1,
                        part.len()
                    )
                }
                for (s, v) in sum.iter_mut().zip(part) {
                    *s += v;
                }
            }
            Ok(sum)
        })?;
        Tensor::from_vec(sum, t.shape(), t.device())?.to_dtype(t.dtype())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let what = "broadcast (threads)";
        if root >= self.shared.world {
            candle_core::bail!("{what}: root {root} in a world of {}", self.shared.world)
        }
        let data = (self.rank == root).then(|| host_f64(what, t)).transpose()?;
        let value = self.exchange(what, data, |slots| {
            let v = slots[root].clone().unwrap_or_default();
            if v.len() != t.elem_count() {
                candle_core::bail!(
                    "{what}: root {root} sent {} values, rank {} expected {}",
                    v.len(),
                    self.rank,
                    t.elem_count()
                )
            }
            Ok(v)
        })?;
        Tensor::from_vec(value, t.shape(), t.device())?.to_dtype(t.dtype())
    }

    fn barrier(&self) -> Result<()> {
        self.wait_all("barrier (threads)", |_| {})
    }

    fn backend(&self) -> &'static str {
        "threads"
    }
}
