//! Items between stages: a record's body (what one item is at one point of the pipeline),
//! the record of an item by its sequence number, where a stage function emits its outputs,
//! and the shape of a worker's stage function. The types every data path shares — the
//! process workers' runs, the record codec, the thread stages' guard — without depending
//! on how stages are built.

use crate::error::Error;

/// Where a stage sends its zero or more outputs for one item, in order.
///
/// A stage function with a `&mut Emit<T>` parameter may call [`Emit::emit`] any number of
/// times per item; the outputs keep their order and stay together as the item's outputs.
#[derive(Debug)]
pub struct Emit<T> {
    items: Vec<T>,
}

impl<T> Emit<T> {
    pub(crate) fn new() -> Self {
        Emit { items: Vec::new() }
    }

    /// Sends one output.
    pub fn emit(&mut self, value: T) {
        self.items.push(value);
    }

    /// Outputs emitted so far for the current item.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if nothing was emitted yet for the current item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn take_one(&mut self) -> T {
        self.items.pop().expect("one output")
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        &self.items
    }

    pub(crate) fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }
}

/// Map function `f` (one output per item) in the general form of a stage function.
#[inline(always)]
pub(crate) fn emitting<In, Out>(
    f: &mut impl FnMut(In) -> Out,
) -> impl FnMut(In, &mut Emit<Out>) -> Result<(), String> + '_ {
    |x, e| {
        e.emit(f(x));
        Ok(())
    }
}

/// The body of a record: what one item is at one point of the pipeline.
#[derive(Debug)]
pub(crate) enum Body<T> {
    One(T),
    Many(Vec<T>),
    /// Dropped by the stage with this index (a filter returned `None`, or nothing emitted).
    Dropped(u32),
    /// Failed at the stage with this index.
    Failed(u32, Box<Error>),
    /// Not an item: the `stream` stage with this index consumed this many more items (they
    /// have no outcome of their own; the collector frees their room in the pipeline).
    Consumed(u32, u64),
}

/// One item (by its sequence number) between two stages.
#[derive(Debug)]
pub(crate) struct Rec<T> {
    pub seq: u64,
    pub body: Body<T>,
}
