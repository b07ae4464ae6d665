//! Batches: what one piece in the caller hands the next (a thread stage, the results
//! iterator, the bridge to a process stage) through a channel.
//!
//! # The problem
//! A record is an item's number and its body: for a `u64`, 32 bytes where the value is 8.
//! Thread stages that pass `x + 1` along spent most of their time writing and reading
//! those records (and the cache lines they fill), not applying the function.
//!
//! # The approach
//! Most batches are consecutive items that each have one value: the feeder pulls them so,
//! and a stage that maps every item to one output keeps them so. [`Batch::Dense`] holds
//! just the values and the first item's number. Any other shape (a dropped, failed or
//! many-output item, numbers with gaps) is [`Batch::Recs`], the general form; a dense
//! batch becomes it when a stage's function makes an exception (see
//! `kernel::apply_batch`). Pieces that need records iterate a batch as records: a dense
//! batch makes them as it goes.
//!
//! # Invariants
//! - A `Dense { first, items }` is exactly the records `first + i: One(items[i])`.
//! - Iterating a batch yields its records in order, whatever its form.

use crate::item::{Body, Rec};

/// A batch of records between two pieces in the caller (see the module docs).
#[derive(Debug)]
pub(crate) enum Batch<T> {
    /// Any records.
    Recs(Vec<Rec<T>>),
    /// The items numbered `first..first + items.len()`, each with one value.
    Dense { first: u64, items: Vec<T> },
}

impl<T> Batch<T> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Batch::Recs(r) => r.len(),
            Batch::Dense { items, .. } => items.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits off the records from index `at` on (as `Vec::split_off`).
    pub(crate) fn split_off(&mut self, at: usize) -> Batch<T> {
        match self {
            Batch::Recs(r) => Batch::Recs(r.split_off(at)),
            Batch::Dense { first, items } => Batch::Dense {
                first: *first + at as u64,
                items: items.split_off(at),
            },
        }
    }

    /// The values of this batch if it can take the items numbered from `seq` on as values
    /// (it is dense and they come next; an empty batch becomes dense).
    pub(crate) fn values_from(&mut self, seq: u64) -> Option<&mut Vec<T>> {
        if self.is_empty() {
            *self = Batch::Dense {
                first: seq,
                items: Vec::new(),
            };
        }
        match self {
            Batch::Dense { first, items } if *first + items.len() as u64 == seq => Some(items),
            _ => None,
        }
    }

    /// The batch's records, to add to (a dense batch becomes records).
    pub(crate) fn recs(&mut self) -> &mut Vec<Rec<T>> {
        if let Batch::Dense { .. } = self {
            let dense = std::mem::take(self);
            *self = Batch::Recs(dense.into_recs());
        }
        match self {
            Batch::Recs(r) => r,
            Batch::Dense { .. } => unreachable!("made records above"),
        }
    }

    /// The batch as records.
    pub(crate) fn into_recs(self) -> Vec<Rec<T>> {
        match self {
            Batch::Recs(r) => r,
            dense => dense.into_iter().collect(),
        }
    }
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch::Recs(Vec::new())
    }
}

impl<T> From<Vec<Rec<T>>> for Batch<T> {
    fn from(recs: Vec<Rec<T>>) -> Self {
        Batch::Recs(recs)
    }
}

impl<T> FromIterator<Rec<T>> for Batch<T> {
    fn from_iter<I: IntoIterator<Item = Rec<T>>>(iter: I) -> Self {
        Batch::Recs(iter.into_iter().collect())
    }
}

/// A batch's records, in order (a dense batch's made as they are taken).
#[derive(Debug)]
pub(crate) enum IntoRecs<T> {
    Recs(std::vec::IntoIter<Rec<T>>),
    Dense {
        next: u64,
        items: std::vec::IntoIter<T>,
    },
}

impl<T> Iterator for IntoRecs<T> {
    type Item = Rec<T>;

    #[inline]
    fn next(&mut self) -> Option<Rec<T>> {
        match self {
            IntoRecs::Recs(r) => r.next(),
            IntoRecs::Dense { next, items } => {
                let x = items.next()?;
                let seq = *next;
                *next += 1;
                Some(Rec {
                    seq,
                    body: Body::One(x),
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            IntoRecs::Recs(r) => r.size_hint(),
            IntoRecs::Dense { items, .. } => items.size_hint(),
        }
    }
}

impl<T> ExactSizeIterator for IntoRecs<T> {}

impl<T> IntoIterator for Batch<T> {
    type Item = Rec<T>;
    type IntoIter = IntoRecs<T>;

    fn into_iter(self) -> IntoRecs<T> {
        match self {
            Batch::Recs(r) => IntoRecs::Recs(r.into_iter()),
            Batch::Dense { first, items } => IntoRecs::Dense {
                next: first,
                items: items.into_iter(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs_and_values(b: Batch<u32>) -> Vec<(u64, u32)> {
        b.into_iter()
            .map(|r| match r.body {
                Body::One(v) => (r.seq, v),
                other => panic!("not one value: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_dense_batch_is_its_records() {
        let b = Batch::Dense {
            first: 7,
            items: vec![10, 11, 12],
        };
        assert_eq!(b.len(), 3);
        assert_eq!(seqs_and_values(b), vec![(7, 10), (8, 11), (9, 12)]);
    }

    #[test]
    fn values_join_a_dense_batch_only_where_they_follow() {
        let mut b = Batch::<u32>::default();
        b.values_from(5)
            .expect("an empty batch takes values")
            .push(50);
        b.values_from(6).expect("the next item").push(60);
        assert!(b.values_from(8).is_none(), "a gap");
        b.recs().push(Rec {
            seq: 8,
            body: Body::One(80),
        });
        assert!(b.values_from(9).is_none(), "records stay records");
        assert_eq!(seqs_and_values(b), vec![(5, 50), (6, 60), (8, 80)]);
    }

    #[test]
    fn split_off_keeps_the_numbers() {
        let mut b = Batch::Dense {
            first: 100,
            items: (0..10).collect(),
        };
        let rest = b.split_off(4);
        assert_eq!(seqs_and_values(b).last(), Some(&(103, 3)));
        assert_eq!(seqs_and_values(rest).first(), Some(&(104, 4)));
    }
}
