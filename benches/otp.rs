//! Benchmarks of `freqalloc::otp`: call round trips (1, 2 and 4 callers) through the server's
//! thread and as direct calls (`Context::allow_direct_calls`), and cast throughput.
//!
//! The BEAM reference on our 2-core machine is about 0.9 M plain message round trips per second
//! between two processes. Run briefly (other builds share the machine):
//! `cargo bench --bench otp -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use freqalloc::otp::{Context, GenServer, ReplyTo, Server};

/// A server that adds up what it is sent.
struct Sum(u64);

impl GenServer for Sum {
    /// Allow direct calls?
    type Args = bool;
    type Call = u64;
    type Reply = u64;
    type Cast = u64;
    type Info = ();
    type Error = std::convert::Infallible;

    fn init(direct: bool, ctx: &mut Context<Self>) -> Result<Self, Self::Error> {
        ctx.allow_direct_calls(direct);
        Ok(Sum(0))
    }

    fn handle_call(
        &mut self,
        n: u64,
        from: ReplyTo<u64>,
        _: &mut Context<Self>,
    ) -> Result<(), Self::Error> {
        self.0 = self.0.wrapping_add(n);
        from.reply(self.0);
        Ok(())
    }

    fn handle_cast(&mut self, n: u64, _: &mut Context<Self>) -> Result<(), Self::Error> {
        self.0 = self.0.wrapping_add(n);
        Ok(())
    }
}

fn calls(c: &mut Criterion) {
    call_group(c, "otp_call_round_trip", false);
    call_group(c, "otp_direct_call", true);
}

fn call_group(c: &mut Criterion, group: &str, direct: bool) {
    let server = Server::<Sum>::start("bench-sum", direct).expect("start");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    for callers in [1u64, 2, 4] {
        g.bench_function(format!("{callers}_callers"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(callers);
                let start = Instant::now();
                thread::scope(|s| {
                    for _ in 0..callers {
                        let server = &server;
                        s.spawn(move || {
                            for i in 0..per {
                                black_box(server.call(i).expect("call"));
                            }
                        });
                    }
                });
                // Time per call, counting all callers' calls.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * callers) as f64)
            })
        });
    }
    g.finish();
}

fn casts(c: &mut Criterion) {
    let server = Server::<Sum>::start("bench-cast", false).expect("start");
    let mut g = c.benchmark_group("otp_cast");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cast_then_sync_call", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                server.cast(i).expect("cast");
            }
            // The mailbox is FIFO: the call returns once every cast has been handled.
            black_box(server.call(0).expect("call"));
            start.elapsed()
        })
    });
    g.finish();
}

/// What a per-call reply cell costs: one `Arc` of an atomic flag, a mutex'd slot and a thread
/// handle, allocated and freed (a proxy for the private `ReplyCell`). Compare with the call round
/// trip to see whether reusing cells per thread would be worth its complexity.
fn reply_cell_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply_cell_alloc_proxy");
    g.throughput(Throughput::Elements(1));
    g.bench_function("arc_new_and_drop", |b| {
        b.iter(|| {
            let cell = std::sync::Arc::new((
                std::sync::atomic::AtomicBool::new(false),
                parking_lot::Mutex::new(Option::<u64>::None),
                thread::current(),
            ));
            *cell.1.lock() = Some(1);
            black_box(cell)
        })
    });
    g.finish();
}

/// The floor: a bare std::sync::mpsc ping-pong between two threads, no server machinery.
fn baseline(c: &mut Criterion) {
    let (req_tx, req_rx) = std::sync::mpsc::channel::<u64>();
    let (rep_tx, rep_rx) = std::sync::mpsc::channel::<u64>();
    let echo = thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || {
            while let Ok(v) = req_rx.recv() {
                if rep_tx.send(v).is_err() {
                    break;
                }
            }
        })
        .expect("spawn");
    let mut g = c.benchmark_group("baseline_mpsc_ping_pong");
    g.throughput(Throughput::Elements(1));
    g.bench_function("1_caller", |b| {
        b.iter(|| {
            req_tx.send(1).expect("send");
            black_box(rep_rx.recv().expect("recv"))
        })
    });
    g.finish();
    drop(req_tx);
    let _ = echo.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = calls, casts, baseline, reply_cell_cost
}
criterion_main!(benches);
