//! A short tour of `freqalloc::ets`: the four table types, a protected table read from another
//! thread, and a dump to disk and back.
//!
//! Run: `cargo run --release --example tables`

use std::thread;

use freqalloc::ets::{EtsError, PublicTable, Table};
use freqalloc::TableType;

fn main() -> Result<(), EtsError> {
    println!("== the four table types: insert (1, a), (1, b), (1, a), (2, c) into each ==");
    for tt in TableType::ALL {
        let mut t: Table<u32, char> = Table::new(tt);
        t.insert_many([(1, 'a'), (1, 'b'), (1, 'a'), (2, 'c')]);
        println!(
            "{:>13}: lookup(1) = {:?}, size = {}, keys = {}",
            tt.to_string(),
            t.lookup(&1),
            t.len(),
            t.info().keys
        );
    }

    println!("\n== ordered_set: free frequency ranges start -> end ==");
    let mut free: Table<u64, u64> = Table::with_name("free", TableType::OrderedSet);
    free.insert_many([(100, 199), (10, 19), (50, 59)]);
    println!(
        "first = {:?}, next(10) = {:?}",
        free.first(),
        free.next(&10)
    );
    println!("range(40..) = {:?}", free.range(40..)?);
    free.delete(&50);
    println!(
        "after delete(50): next(10) = {:?}, next(50) = {:?} (the key need not exist)",
        free.next(&10),
        free.next(&50)
    );

    println!("\n== a protected table: the owner writes, another thread reads ==");
    let mut counters: Table<&'static str, u64> = Table::with_name("counters", TableType::Set);
    let reader = counters.reader();
    let watcher = thread::spawn(move || {
        // Reads never block the owner for long and always see whole operations.
        let mut seen = 0;
        while seen < 1000 {
            seen = reader.get(&"hits").unwrap_or(0);
        }
        seen
    });
    for _ in 0..1000 {
        counters.update_counter(&"hits", 1, Some(0))?;
    }
    println!(
        "the reader thread saw hits = {}",
        watcher.join().unwrap_or(0)
    );
    match counters.update_counter(&"misses", 1, None) {
        Err(e) => println!("update_counter without a default: {e}"),
        Ok(v) => println!("unexpected: {v}"),
    }

    println!("\n== a public table: every clone writes ==");
    let bag: PublicTable<u8, u32> = PublicTable::new(TableType::DuplicateBag);
    thread::scope(|s| {
        for id in 0..2u32 {
            let bag = bag.clone();
            s.spawn(move || {
                for i in 0..3 {
                    bag.insert(i, id);
                }
            });
        }
    });
    println!("duplicate_bag size after two writer threads: {}", bag.len());

    println!("\n== tab2file / file2tab ==");
    let path = std::env::temp_dir().join(format!("freqalloc-ets-tour-{}.ets", std::process::id()));
    free.tab2file(&path)?;
    let back: Table<u64, u64> = Table::file2tab(&path)?;
    println!(
        "dumped {:?} to {} and read it back: name {:?}, {:?}",
        free.to_vec(),
        path.display(),
        back.name(),
        back.to_vec()
    );
    match Table::<u64, String>::file2tab(&path) {
        Err(e) => println!("reading it as another type: {e}"),
        Ok(_) => println!("unexpected: read as another type"),
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}
