//! Process-wide memory settings the binaries (`plico`, `plico-bench`) make first thing in
//! `main`, before the work allocates.
//!
//! # Transparent huge pages: off for plico's processes
//!
//! The allocator (mimalloc) asks the kernel for transparent huge pages on its arenas
//! (`madvise(MADV_HUGEPAGE)`, its `allow_thp` default). Each first touch of such a region
//! then faults in and zeroes a whole 2 MiB page, and each purge of freed memory (mimalloc
//! returns it after a second) splits one again. On the 2-core machines plico runs on, this
//! showed as:
//!
//! - stalls of 0.2–1.4 s with both cores in the kernel (`clear_page_erms`), every request of
//!   the service waiting meanwhile: the console's holder page at 500 requests/s had a p99 of
//!   240–355 ms in two of three quiet runs of `plico-bench console --seconds 10 --cards 10000`
//!   (3.8 ms in the third);
//! - resident memory six times the working set: 806 MiB peak against 125 MiB for the same
//!   `plico-bench console --seconds 5 --cards 10000` run with huge pages off.
//!
//! `prctl(PR_SET_THP_DISABLE)` turns them off for this process only (the kernel ignores the
//! allocator's `madvise` from then on); the machine's setting is left alone.

/// Turns transparent huge pages off for this process. Returns what went wrong, for the
/// caller to log: the process still runs, only with the stalls described above.
pub fn disable_transparent_huge_pages() -> Option<String> {
    nix::sys::prctl::set_thp_disable(true)
        .err()
        .map(|e| format!("could not turn transparent huge pages off (PR_SET_THP_DISABLE): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_end_up_off_for_the_process() {
        // Other tests of this binary share the process; turning them off is what the
        // binaries do anyway.
        assert_eq!(disable_transparent_huge_pages(), None);
        assert!(nix::sys::prctl::get_thp_disable().expect("PR_GET_THP_DISABLE"));
    }
}
