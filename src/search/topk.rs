//! Running top-k per query: a candidate buffer with linear-time selection, plus a threshold array the SIMD kernels
//! compare whole score vectors against before touching any buffer.
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

/// Rank order: better hits first (a total order, so selection and sorting are deterministic).
fn rank(a: &Hit, b: &Hit) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.index.cmp(&b.index))
}

/// The running top-k of `queries` queries.
///
/// Each query appends its candidates to a buffer of about 2k; when the buffer fills, a linear-time selection
/// keeps the k best and the k-th best score becomes the query's threshold. Each candidate costs O(1) amortized
/// (a heap costs O(log k) cache-missing swaps, which dominated at k = 1000).
pub struct TopKSet {
    k: usize,
    /// Buffer capacity per query.
    cap: usize,
    /// Query q owns `hits[q·cap .. q·cap + lens[q]]`.
    hits: Vec<Hit>,
    lens: Vec<usize>,
    /// Per query, the score a new hit must reach (≥) to be kept: −∞ until the first selection, then the k-th best
    /// score so far; +∞ for padding columns, which never pass. Laid out for vector loads.
    thresholds: Vec<f32>,
}

impl TopKSet {
    /// `padded` ≥ `queries` threshold slots (the kernels read whole vectors of them); slots past `queries` are +∞.
    pub fn new(queries: usize, padded: usize, k: usize) -> TopKSet {
        let mut thresholds = vec![f32::INFINITY; padded.max(queries)];
        thresholds[..queries].fill(f32::NEG_INFINITY);
        let cap = 2 * k + 32;
        TopKSet {
            k,
            cap,
            hits: vec![
                Hit {
                    score: f32::NEG_INFINITY,
                    index: u32::MAX
                };
                queries * cap
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
        // Ties with the threshold pass (one of them may have the lower index); NaN never does.
        let passes = hit.score >= self.thresholds[q];
        if !passes {
            return;
        }
        if self.lens[q] == self.cap {
            self.select(q);
        }
        self.hits[q * self.cap + self.lens[q]] = hit;
        self.lens[q] += 1;
    }

    /// Keeps query `q`'s k best candidates and raises its threshold to the k-th best score.
    fn select(&mut self, q: usize) {
        let (k, len) = (self.k, self.lens[q]);
        if len <= k {
            return;
        }
        let buf = &mut self.hits[q * self.cap..q * self.cap + len];
        buf.select_nth_unstable_by(k - 1, rank);
        self.lens[q] = k;
        self.thresholds[q] = buf[..k]
            .iter()
            .map(|h| h.score)
            .fold(f32::INFINITY, f32::min);
    }

    /// Folds `other` (the same queries, another part of the gallery) into `self`.
    pub fn merge(mut self, other: TopKSet) -> TopKSet {
        for q in 0..other.lens.len() {
            for &h in &other.hits[q * other.cap..q * other.cap + other.lens[q]] {
                self.offer(q, h);
            }
        }
        self
    }

    /// Query `q`'s hits, best first (at most k).
    pub fn sorted(&mut self, q: usize) -> Vec<Hit> {
        self.select(q);
        let mut v = self.hits[q * self.cap..q * self.cap + self.lens[q]].to_vec();
        v.sort_by(rank);
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
    fn merge_equals_one_pass_and_thresholds_track_the_kth_best() {
        let mut all = TopKSet::new(2, 16, 3);
        // 200 offers overflow the 38-slot buffers several times: selection runs mid-stream.
        let (mut a, mut b) = (TopKSet::new(2, 16, 3), TopKSet::new(2, 16, 3));
        for i in 0..200u32 {
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
        let mut m = a.merge(b);
        for q in 0..2 {
            assert_eq!(m.sorted(q), all.sorted(q));
            let third = all.sorted(q)[2].score;
            assert_eq!(all.thresholds()[q], third);
        }
        assert!(all.thresholds()[2..].iter().all(|t| *t == f32::INFINITY));
    }
}
