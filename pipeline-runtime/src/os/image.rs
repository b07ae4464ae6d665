//! Values that mean the same in every fork of this process image: function pointers, as
//! addresses, and zero-sized function values, made again from nothing.
//!
//! `fork` copies the address space, so a function's address in the caller is that
//! function's address in the fork server and in every process forked from it. These are
//! the primitives [`crate::recipe`] builds stage identity on; their contracts are about
//! where a value came from, which only the caller can know, so they are `unsafe fn`s.

/// The address of the function pointer `f` (`F` must be a function pointer type).
pub(crate) fn addr_of<F: Copy>(f: F) -> usize {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
    // SAFETY: `F` is pointer-sized and `Copy` (a function pointer); reading it as an
    // integer reads its address.
    unsafe { std::mem::transmute_copy::<F, usize>(&f) }
}

/// The function pointer at `addr`.
///
/// # Safety
/// `addr` came from [`addr_of`] of a value of exactly the type `F`, in this process or in a
/// process of which this one is a fork (the same image).
pub(crate) unsafe fn fn_at<F: Copy>(addr: usize) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
    // SAFETY: by the contract, `addr` is the address of a function of type `F` in this
    // image, so it is a valid value of `F`.
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}

/// A value of the zero-sized type `F`, made from nothing.
///
/// # Safety
/// A value of `F` existed in this image (so `F` is inhabited), and a copy of it may exist
/// (as it would after a `fork`, which copies every value).
pub(crate) unsafe fn remake<F>() -> F {
    assert_eq!(
        std::mem::size_of::<F>(),
        0,
        "only zero-sized values can be made again"
    );
    // SAFETY: `F` has no bytes, so every value of it is the same, and by the contract it is
    // inhabited: a dangling, aligned pointer reads that value.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}
