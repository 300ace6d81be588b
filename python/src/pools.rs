//! Compute threads per call. With `threads=None` a call runs on rayon's global pool (all cores, as the CLI does).
//! With `threads=n` each call runs on a pool of its own of `n` threads, taken from a free list and given back
//! after: two Python threads calling one model at once each get their own `n` threads, instead of queueing on one
//! shared pool, and no call pays for starting threads once the list holds enough pools.

use std::sync::Mutex;

use pyo3::PyResult;

use crate::errors;

pub struct Pools {
    threads: Option<usize>,
    free: Mutex<Vec<rayon::ThreadPool>>,
}

impl Pools {
    pub fn new(threads: Option<usize>) -> PyResult<Pools> {
        if let Some(n) = threads {
            cliprt::limits::check("threads", n as u64, cliprt::limits::MAX_THREADS as u64)
                .map_err(errors::to_py)?;
            if n == 0 {
                return Err(errors::input("threads must be ≥ 1"));
            }
        }
        Ok(Pools {
            threads,
            free: Mutex::new(Vec::new()),
        })
    }

    pub fn threads(&self) -> Option<usize> {
        self.threads
    }

    /// Runs `f` on this call's threads.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> PyResult<T> {
        let Some(n) = self.threads else {
            return Ok(f());
        };
        let pool = match self.take() {
            Some(p) => p,
            None => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("cliprt-{i}"))
                .build()
                .map_err(|e| errors::CliprtError::new_err(format!("cannot start threads: {e}")))?,
        };
        let out = pool.install(f);
        self.give_back(pool);
        Ok(out)
    }

    fn take(&self) -> Option<rayon::ThreadPool> {
        // A poisoned list only means a panic elsewhere; the pools in it are fine.
        match self.free.lock() {
            Ok(mut g) => g.pop(),
            Err(p) => p.into_inner().pop(),
        }
    }

    fn give_back(&self, pool: rayon::ThreadPool) {
        match self.free.lock() {
            Ok(mut g) => g.push(pool),
            Err(p) => p.into_inner().push(pool),
        }
    }
}
