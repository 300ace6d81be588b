//! Running top-k per query: a bounded binary heap whose root is the current k-th best, plus a threshold array the
//! SIMD kernels compare whole score vectors against before touching any heap.
//!
//! Order: a hit is better when its score is higher, or equal with a lower gallery index, so results are
//! deterministic whatever the thread split (exact ties come out lower index first).

/// One candidate: (score, gallery row).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub score: f32,
    pub index: u32,
}

impl Hit {
    /// `self` ranks strictly before `other`.
    #[inline]
    pub fn better(self, other: Hit) -> bool {
        self.score > other.score || (self.score == other.score && self.index < other.index)
    }
}

/// The running top-k of `queries` queries.
pub struct TopKSet {
    k: usize,
    /// Per query, a min-heap (root = worst kept hit), at most k long; query q owns `heaps[q*k .. q*k + lens[q]]`.
    heaps: Vec<Hit>,
    lens: Vec<usize>,
    /// Per query, the score a new hit must reach (≥) to be looked at: −∞ until the heap is full, then the root's
    /// score; +∞ for padding columns, which never pass. Laid out for vector loads.
    thresholds: Vec<f32>,
}

impl TopKSet {
    /// `padded` ≥ `queries` threshold slots (the kernels read whole vectors of them); slots past `queries` are +∞.
    pub fn new(queries: usize, padded: usize, k: usize) -> TopKSet {
        let mut thresholds = vec![f32::INFINITY; padded.max(queries)];
        thresholds[..queries].fill(f32::NEG_INFINITY);
        TopKSet {
            k,
            heaps: vec![
                Hit {
                    score: f32::NEG_INFINITY,
                    index: u32::MAX
                };
                queries * k
            ],
            lens: vec![0; queries],
            thresholds,
        }
    }

    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }

    pub fn queries(&self) -> usize {
        self.lens.len()
    }

    /// Offers `hit` to query `q`'s top-k.
    #[inline]
    pub fn offer(&mut self, q: usize, hit: Hit) {
        let k = self.k;
        let len = self.lens[q];
        let heap = &mut self.heaps[q * k..(q + 1) * k];
        if len < k {
            // Sift up: in this heap a parent is never better than its children (the root is the worst hit).
            let mut i = len;
            heap[i] = hit;
            while i > 0 {
                let p = (i - 1) / 2;
                if heap[p].better(heap[i]) {
                    heap.swap(p, i);
                    i = p;
                } else {
                    break;
                }
            }
            self.lens[q] = len + 1;
            if len + 1 == k {
                self.thresholds[q] = heap[0].score;
            }
            return;
        }
        if !hit.better(heap[0]) {
            return;
        }
        // Replace the root (the worst kept hit) and sift down.
        heap[0] = hit;
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut worst = i;
            if l < k && heap[worst].better(heap[l]) {
                worst = l;
            }
            if r < k && heap[worst].better(heap[r]) {
                worst = r;
            }
            if worst == i {
                break;
            }
            heap.swap(i, worst);
            i = worst;
        }
        self.thresholds[q] = heap[0].score;
    }

    /// Folds `other` (the same queries, another part of the gallery) into `self`.
    pub fn merge(mut self, other: TopKSet) -> TopKSet {
        for q in 0..other.lens.len() {
            for &h in &other.heaps[q * other.k..q * other.k + other.lens[q]] {
                self.offer(q, h);
            }
        }
        self
    }

    /// Query `q`'s hits, best first.
    pub fn sorted(&self, q: usize) -> Vec<Hit> {
        let mut v = self.heaps[q * self.k..q * self.k + self.lens[q]].to_vec();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_best_with_ties_by_lower_index() {
        let scores = [0.5f32, 0.9, 0.1, 0.9, 0.7, 0.9, 0.3, 0.7];
        for k in 1..=scores.len() + 2 {
            let mut t = TopKSet::new(1, 16, k);
            // Offered in a scrambled order: the result must not depend on it.
            for &i in &[7usize, 2, 5, 0, 3, 6, 1, 4] {
                t.offer(
                    0,
                    Hit {
                        score: scores[i],
                        index: i as u32,
                    },
                );
            }
            let mut want: Vec<(f32, u32)> = scores
                .iter()
                .enumerate()
                .map(|(i, &s)| (s, i as u32))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            want.truncate(k);
            let got: Vec<(f32, u32)> = t.sorted(0).iter().map(|h| (h.score, h.index)).collect();
            assert_eq!(got, want, "k = {k}");
        }
    }

    #[test]
    fn merge_equals_one_pass_and_thresholds_track_the_root() {
        let mut all = TopKSet::new(2, 16, 3);
        let (mut a, mut b) = (TopKSet::new(2, 16, 3), TopKSet::new(2, 16, 3));
        for i in 0..20u32 {
            let s = ((i * 7) % 11) as f32;
            for q in 0..2 {
                let h = Hit {
                    score: s + q as f32,
                    index: i,
                };
                all.offer(q, h);
                if i % 2 == 0 {
                    a.offer(q, h)
                } else {
                    b.offer(q, h)
                }
            }
        }
        let m = a.merge(b);
        for q in 0..2 {
            assert_eq!(m.sorted(q), all.sorted(q));
            assert_eq!(all.thresholds()[q], all.sorted(q)[2].score);
        }
        assert!(all.thresholds()[2..].iter().all(|t| *t == f32::INFINITY));
    }
}
