//! Step 1 of the course: the single frequency server, as a generic server.
//!
//! Read it next to the course's `frequency2.erl`: the state is the pair of lists `{Free,
//! Allocated}`, `allocate` takes the head of the free list, `deallocate` puts a frequency back,
//! `stop` ends the server. `init/1`, `handle_call/3` and `terminate/2` are the gen_server
//! callbacks of the same names.
//!
//! Run: `cargo run --release --example frequency`

use freqalloc::otp::{Context, ExitReason, GenServer, ReplyTo, Server};

/// The course's state: free frequencies and `{Freq, Pid}` pairs (here the client's name).
struct Frequency {
    free: Vec<u64>,
    allocated: Vec<(u64, String)>,
}

enum Request {
    Allocate(String),
    Deallocate(u64, String),
}

#[derive(Debug, PartialEq)]
enum Reply {
    Ok(u64),
    Deallocated,
    Error(&'static str),
}

impl GenServer for Frequency {
    type Args = Vec<u64>;
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = ();
    type Error = std::convert::Infallible;

    // init() -> Frequencies = {get_frequencies(), []}, loop(Frequencies).
    fn init(free: Vec<u64>, _ctx: &mut Context<Self>) -> Result<Self, Self::Error> {
        Ok(Frequency {
            free,
            allocated: Vec::new(),
        })
    }

    fn handle_call(
        &mut self,
        req: Request,
        from: ReplyTo<Reply>,
        _ctx: &mut Context<Self>,
    ) -> Result<(), Self::Error> {
        let reply = match req {
            // allocate({[], Allocated}, _Pid) -> {{[], Allocated}, {error, no_frequency}};
            // allocate({[Freq|Free], Allocated}, Pid) -> {{Free, [{Freq, Pid}|Allocated]}, {ok, Freq}}.
            Request::Allocate(client) => {
                if self.free.is_empty() {
                    Reply::Error("no_frequency")
                } else {
                    let f = self.free.remove(0);
                    self.allocated.push((f, client));
                    Reply::Ok(f)
                }
            }
            // The course's deallocate trusts its caller; we check the owner, as its exercise asks.
            Request::Deallocate(f, client) => {
                match self.allocated.iter().position(|(g, _)| *g == f) {
                    Some(i) if self.allocated[i].1 == client => {
                        self.allocated.remove(i);
                        self.free.push(f);
                        Reply::Deallocated
                    }
                    Some(_) => Reply::Error("not_owner"),
                    None => Reply::Error("not_allocated"),
                }
            }
        };
        from.reply(reply);
        Ok(())
    }

    fn terminate(&mut self, reason: &ExitReason) {
        println!(
            "frequency server stopping ({reason}): {} free, {} allocated",
            self.free.len(),
            self.allocated.len()
        );
    }
}

fn main() -> Result<(), freqalloc::otp::OtpError> {
    // get_frequencies() -> [10,11,12,13,14,15].
    let server = Server::<Frequency>::start("frequency", (10..=15).collect())?;
    for client in ["radio-1", "radio-2"] {
        let reply = server.call(Request::Allocate(client.into()))?;
        println!("allocate for {client}: {reply:?}");
    }
    println!(
        "deallocate 10 as radio-2: {:?}",
        server.call(Request::Deallocate(10, "radio-2".into()))?
    );
    println!(
        "deallocate 10 as radio-1: {:?}",
        server.call(Request::Deallocate(10, "radio-1".into()))?
    );
    for _ in 0..6 {
        let reply = server.call(Request::Allocate("greedy".into()))?;
        println!("allocate for greedy: {reply:?}");
    }
    server.stop(ExitReason::Normal)?;
    Ok(())
}
