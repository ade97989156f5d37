//! The process allocator: mimalloc, told to keep freed memory.
//!
//! candle allocates a fresh buffer for every tensor op and its backward pass. With glibc (and
//! with mimalloc's defaults) buffers above a few MB go back to the kernel when freed, so every
//! training step page-faults and zeroes gigabytes again: on a NAS-Bench-Macro step at batch 64
//! the kernel's page clearing was 30% of the profile and the step ~1.5x slower.

#![deny(unsafe_op_in_unsafe_fn)]

/// `mi_option_purge_delay` in `mimalloc.h`'s `mi_option_e` (the same in mimalloc v2 and v3; the
/// Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS (purge delay -1): the next step reuses it.
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it has no
    // preconditions and is safe to call at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
