//! Compute threads per call. Every computation runs inside a rayon pool of cliprt's own, `threads` threads wide
//! (all cores when `threads=None`, as the CLI runs), taken from a free list and given back after:
//! - two Python threads calling one model at once each get a pool of their own, instead of queueing on one;
//! - no call pays for starting threads once the list holds enough pools;
//! - a process forked from one that computed (multiprocessing, DataLoader workers) works: the parent's pools have
//!   no threads in the child, so each pool remembers the process that built it and the child builds its own.
//!   (rayon's global pool has no such guard, which is why it is never used here.)

use std::sync::{Mutex, OnceLock};

use pyo3::PyResult;

use crate::errors;

pub struct Pools {
    /// As asked (None: all cores).
    asked: Option<usize>,
    threads: usize,
    /// Idle pools, each with the id of the process whose threads it holds.
    free: Mutex<Vec<(u32, rayon::ThreadPool)>>,
}

impl Pools {
    pub fn new(threads: Option<usize>) -> PyResult<Pools> {
        let n = match threads {
            Some(0) => return Err(errors::input("threads must be ≥ 1")),
            Some(n) => {
                cliprt::limits::check("threads", n as u64, cliprt::limits::MAX_THREADS as u64)
                    .map_err(errors::to_py)?;
                n
            }
            None => all_cores(),
        };
        Ok(Pools {
            asked: threads,
            threads: n,
            free: Mutex::new(Vec::new()),
        })
    }

    /// The pools of calls that have no model (module-level `search`): all cores.
    pub fn shared() -> &'static Pools {
        static SHARED: OnceLock<Pools> = OnceLock::new();
        SHARED.get_or_init(|| Pools {
            asked: None,
            threads: all_cores(),
            free: Mutex::new(Vec::new()),
        })
    }

    /// Threads per call as asked (None: all cores).
    pub fn threads(&self) -> Option<usize> {
        self.asked
    }

    /// Runs `f` on this call's threads.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> PyResult<T> {
        let pid = std::process::id();
        let pool = match self.take(pid) {
            Some(p) => p,
            None => rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads)
                .thread_name(|i| format!("cliprt-{i}"))
                .build()
                .map_err(|e| errors::CliprtError::new_err(format!("cannot start threads: {e}")))?,
        };
        let out = pool.install(f);
        self.lock().push((pid, pool));
        Ok(out)
    }

    /// An idle pool of this process. A parent's pool found in a forked child is leaked, not dropped: dropping
    /// would signal threads that do not exist here, through locks their state was copied in.
    fn take(&self, pid: u32) -> Option<rayon::ThreadPool> {
        let mut free = self.lock();
        while let Some((owner, pool)) = free.pop() {
            if owner == pid {
                return Some(pool);
            }
            std::mem::forget(pool);
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u32, rayon::ThreadPool)>> {
        // A poisoned list only means a panic elsewhere; the pools in it are fine.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All cores, as rayon counts them for its default pool (`RAYON_NUM_THREADS` when set to a positive number).
fn all_cores() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(cliprt::limits::MAX_THREADS)
}
