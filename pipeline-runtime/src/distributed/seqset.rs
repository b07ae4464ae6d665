//! The items of a group without an outcome yet, in the caller: a set of sequence numbers
//! kept as bits over the span from the oldest to the newest, since items enter and leave
//! in nearly the order of their numbers (a bit each, and no hashing, per item).
//!
//! The span, not the count, sets its size: one item that stays out while millions pass
//! holds a bit for each of them (1.25 MB per 10 million), until it has its outcome.

use std::collections::VecDeque;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct SeqSet {
    /// The number of the first bit of `words[0]` (a multiple of 64).
    base: u64,
    words: VecDeque<u64>,
    len: usize,
}

impl SeqSet {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `seq`; false if it was in.
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        if self.words.is_empty() {
            self.base = seq & !63;
        }
        while seq < self.base {
            self.words.push_front(0);
            self.base -= 64;
        }
        let w = ((seq - self.base) / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        let new = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += usize::from(new);
        new
    }

    /// Removes `seq`; false if it was not in.
    pub(crate) fn remove(&mut self, seq: u64) -> bool {
        let Some(w) = self.word(seq) else {
            return false;
        };
        let bit = 1u64 << (seq % 64);
        if self.words[w] & bit == 0 {
            return false;
        }
        self.words[w] &= !bit;
        self.len -= 1;
        while self.words.front() == Some(&0) {
            self.words.pop_front();
            self.base += 64;
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.word(seq)
            .is_some_and(|w| self.words[w] & (1u64 << (seq % 64)) != 0)
    }

    fn word(&self, seq: u64) -> Option<usize> {
        let w = (seq.checked_sub(self.base)? / 64) as usize;
        (w < self.words.len()).then_some(w)
    }

    /// Every number in the set, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (self.words.iter().enumerate()).flat_map(move |(i, &w)| {
            let at = self.base + 64 * i as u64;
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| at + b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SeqSet;

    #[test]
    fn in_and_out_of_order() {
        let mut s = SeqSet::default();
        for x in [200, 5, 64, 65, 1000] {
            assert!(s.insert(x));
        }
        assert!(!s.insert(64));
        assert_eq!(s.len(), 5);
        assert_eq!(s.iter().collect::<Vec<_>>(), [5, 64, 65, 200, 1000]);
        assert!(s.remove(5) && !s.remove(5) && !s.remove(3) && !s.remove(5000));
        assert!(s.contains(65) && !s.contains(66));
        for x in [64, 65, 200, 1000] {
            assert!(s.remove(x));
        }
        assert!(s.is_empty() && s.words.is_empty());
    }
}
