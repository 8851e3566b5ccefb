//! Step 2 of the course: two back-end servers, 10-15 and 20-25, behind a front end with the
//! same API, for each way of choosing the shard of an allocation.
//!
//! The front end here is not a process: each caller picks the shard itself from counts the
//! shards publish, so no router thread sits on every request. Deallocation goes straight to the
//! shard that owns the frequency.
//!
//! Run: `cargo run --release --example sharded`

use freqalloc::freq::{parse_pool, Allocator, FreqError, Layout, Routing};

fn main() -> Result<(), FreqError> {
    let layout = Layout::one_shard_per_range(&parse_pool("10-15,20-25")?)?;
    for strategy in Routing::ALL {
        let alloc = Allocator::in_memory(layout.clone(), strategy, None)?;
        let mut got = Vec::new();
        loop {
            match alloc.allocate("radio") {
                Ok(f) => got.push(f),
                Err(FreqError::NoFrequency { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        println!(
            "{:<12} allocates {:?}, then: no frequency",
            strategy.name(),
            got
        );
        // Deallocation is routed to the owner; the freed frequency is that shard's lowest again.
        alloc.deallocate(22, "radio")?;
        alloc.deallocate(11, "radio")?;
        println!(
            "{:<12} after freeing 22 and 11: free per shard {:?}",
            "",
            alloc.free_per_shard()
        );
        assert!(alloc.check()?.is_empty());
    }
    Ok(())
}
