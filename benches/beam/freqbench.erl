%% freqbench: the BEAM side of freqalloc's side-by-side benchmarks (issue 7).
%%
%% The same workloads as the Rust side (`freqalloc bench tables`, `freqalloc load`), written
%% the way an Erlang programmer would, printing one JSON object per line on stdout:
%%
%%   erl -noshell -pa DIR -run freqbench main ets N
%%       ETS insert / lookup / delete of keys 0..N-1 (value = key) for set, ordered_set, bag,
%%       duplicate_bag; 1 process (the owner of a default, protected table) and 2 processes
%%       (a public table with write_concurrency and read_concurrency, each process half the
%%       keys). One warm-up cycle per configuration, not reported.
%%   erl -noshell -pa DIR -run freqbench main dets N SYNC_WRITES TMPDIR
%%       DETS insert (one dets:sync at the end) / lookup / delete (one sync at the end) of
%%       keys 0..N-1 for set, bag, duplicate_bag; then SYNC_WRITES durable single writes
%%       (dets:insert + dets:sync per write) on a set.
%%   erl -noshell -pa DIR -run freqbench main alloc KIND SHARDS CLIENTS SECONDS POOL
%%       The course's frequency server (plain processes, {request, Pid, Msg} / {reply, R}).
%%       KIND single: one server holding 0..POOL-1. KIND router: SHARDS back-end servers
%%       splitting 0..POOL-1 evenly behind a router process that sends each allocation to the
%%       back end with the most free frequencies (ties: the lowest index) and each
%%       deallocation to the owner of the frequency; back ends reply to the client directly.
%%       CLIENTS processes loop allocate + deallocate for SECONDS.
%%   erl -sname bench@localhost -setcookie C -noshell -pa DIR \
%%       -run freqbench main dist_clients NODE CLIENTS SECONDS SIDE
%%       Distribution: CLIENTS processes on this node loop gen_server:call({frequency, NODE},
%%       allocate) + {deallocate, F} for SECONDS over the distribution link to NODE (a
%%       freqalloc node, or tests/erl/frequency_beam.erl on a BEAM node). SIDE labels the
%%       line ("rust" when NODE is the freqalloc node, "beam" for the BEAM one); workload
%%       "dist/beam_clients". One warm-up call first (it connects), not timed.
%%   erl -sname r@localhost -setcookie C -noshell -pa DIR \
%%       -run freqbench main cluster_router NODES SHARDS POOL
%%       The BEAM side of the cluster rows (issue 14): this node registers `frequency`, the
%%       course's router over SHARDS back ends spread round NODES (comma-separated, this node
%%       among them; shard i on node i mod N, as `freqalloc init --nodes` places them), each
%%       spawned on its node. The router forwards each gen_server call ('$gen_call') to a back
%%       end (allocations to the one with the most free, deallocations to the owner), and the
%%       back end answers the caller directly (gen:reply). Prints a ready line, then serves
%%       until killed.
%%   erl -sname r@localhost -setcookie C -noshell -pa DIR \
%%       -run freqbench main cluster_router NODES SHARDS POOL REPLICAS
%%       The same with REPLICAS 1 (as above) or 2: each back end (shard i on node i mod N) has
%%       a backup process on the next node, (i + 1) mod N (with one node, on the same node),
%%       holding the same {Free, Allocated} state. For every change that succeeds (an
%%       allocation, a deallocation) the back end sends the change to its backup and waits for
%%       the backup's acknowledgement before it answers the client: synchronous primary/backup
%%       replication, the course's two back ends holding the same state. The wait is bounded
%%       (5 s; the back end exits on a timeout). The router is unchanged.
%%
%% Timing is wall clock (erlang:monotonic_time/1) from releasing the workers to the last one
%% done, as on the Rust side. Run it through benches/beam/compare.sh, which compiles this file
%% into a temporary directory with erlc.

-module(freqbench).
-export([main/1]).

main(Args) ->
    try run(Args) of
        ok -> halt(0)
    catch
        Class:Reason:Stack ->
            io:format(standard_error, "freqbench: ~p:~p~n~p~n", [Class, Reason, Stack]),
            halt(1)
    end.

run(["ets", N]) ->
    ets_all(list_to_integer(N));
run(["dets", N, SyncWrites, Dir]) ->
    dets_all(list_to_integer(N), list_to_integer(SyncWrites), Dir);
run(["alloc", Kind, Shards, Clients, Seconds, Pool]) ->
    alloc(list_to_atom(Kind), list_to_integer(Shards), list_to_integer(Clients),
          to_float(Seconds), list_to_integer(Pool));
run(["cluster_router", Nodes, Shards, Pool]) ->
    run(["cluster_router", Nodes, Shards, Pool, "1"]);
run(["cluster_router", Nodes, Shards, Pool, Replicas]) when Replicas =:= "1"; Replicas =:= "2" ->
    cluster_router(string:tokens(Nodes, ","), list_to_integer(Shards), list_to_integer(Pool),
                   list_to_integer(Replicas));
run(["dist_clients", Node, Clients, Seconds, Side]) ->
    dist_clients(list_to_atom(Node), list_to_integer(Clients), to_float(Seconds), Side);
run(Other) ->
    io:format(standard_error, "freqbench: bad arguments ~p~n", [Other]),
    halt(2).

to_float(S) ->
    try list_to_float(S) catch error:badarg -> float(list_to_integer(S)) end.

now_ns() -> erlang:monotonic_time(nanosecond).

emit(Fmt, Args) ->
    io:format("{\"side\":\"beam\"," ++ Fmt ++ "}~n", Args).

emit_table(Workload, Threads, Keys, Secs) ->
    emit("\"workload\":\"~s\",\"threads\":~b,\"keys\":~b,\"seconds\":~.6f,\"ops_per_sec\":~.1f",
         [Workload, Threads, Keys, Secs, Keys / Secs]).

%% ---------------------------------------------------------------- ETS

ets_all(N) ->
    [ets_type(Type, Procs, N) || Type <- [set, ordered_set, bag, duplicate_bag], Procs <- [1, 2]],
    ok.

ets_type(Type, Procs, N) ->
    Opts = case Procs of
               1 -> [Type];
               2 -> [Type, public, {write_concurrency, true}, {read_concurrency, true}]
           end,
    _Warmup = ets_cycle(Opts, Procs, N),
    [emit_table(io_lib:format("ets/~s/~s", [Type, Op]), Procs, N, Secs)
     || {Op, Secs} <- ets_cycle(Opts, Procs, N)].

ets_cycle(Opts, Procs, N) ->
    T = ets:new(freqbench, Opts),
    {I, _} = timed(Procs, N, fun(From, To) -> ets_ins(T, From, To) end),
    {L, Found} = timed(Procs, N, fun(From, To) -> ets_look(T, From, To, 0) end),
    Found =:= N orelse error({lookup_found, Found, N}),
    {D, _} = timed(Procs, N, fun(From, To) -> ets_del(T, From, To) end),
    0 = ets:info(T, size),
    ets:delete(T),
    [{insert, I}, {lookup, L}, {delete, D}].

ets_ins(_T, I, To) when I >= To -> 0;
ets_ins(T, I, To) -> true = ets:insert(T, {I, I}), ets_ins(T, I + 1, To).

ets_look(_T, I, To, Acc) when I >= To -> Acc;
ets_look(T, I, To, Acc) -> ets_look(T, I + 1, To, Acc + length(ets:lookup(T, I))).

ets_del(_T, I, To) when I >= To -> 0;
ets_del(T, I, To) -> true = ets:delete(T, I), ets_del(T, I + 1, To).

%% Runs F over 0..N-1 split into Procs equal ranges; returns {Seconds, SumOfResults}.
%% One process runs in the caller (the owner of a protected table); more are spawned,
%% wait until all are ready, then are released together.
timed(1, N, F) ->
    T0 = now_ns(),
    R = F(0, N),
    {(now_ns() - T0) / 1.0e9, R};
timed(Procs, N, F) ->
    Parent = self(),
    Per = N div Procs,
    Pids = [spawn_link(fun() ->
                               Parent ! {ready, self()},
                               receive go -> ok end,
                               Parent ! {done, self(), F(P * Per, (P + 1) * Per)}
                       end)
            || P <- lists:seq(0, Procs - 1)],
    [receive {ready, Pid} -> ok end || Pid <- Pids],
    T0 = now_ns(),
    [Pid ! go || Pid <- Pids],
    Rs = [receive {done, Pid, R} -> R end || Pid <- Pids],
    {(now_ns() - T0) / 1.0e9, lists:sum(Rs)}.

%% ---------------------------------------------------------------- DETS

dets_all(N, SyncWrites, Dir) ->
    [dets_type(Type, N, Dir) || Type <- [set, bag, duplicate_bag]],
    dets_sync_each(SyncWrites, Dir),
    ok.

dets_type(Type, N, Dir) ->
    _Warmup = dets_cycle(Type, N, Dir),
    [emit_table(io_lib:format("dets/~s/~s", [Type, Op]), 1, N, Secs)
     || {Op, Secs} <- dets_cycle(Type, N, Dir)].

dets_open(Type, Dir) ->
    File = filename:join(Dir, "freqbench-" ++ atom_to_list(Type) ++ ".dets"),
    _ = file:delete(File),
    {ok, T} = dets:open_file(freqbench, [{file, File}, {type, Type}, {auto_save, infinity}]),
    {T, File}.

dets_cycle(Type, N, Dir) ->
    {T, File} = dets_open(Type, Dir),
    {I, _} = timed(1, N, fun(From, To) -> dets_ins(T, From, To), ok = dets:sync(T), 0 end),
    {L, Found} = timed(1, N, fun(From, To) -> dets_look(T, From, To, 0) end),
    Found =:= N orelse error({lookup_found, Found, N}),
    {D, _} = timed(1, N, fun(From, To) -> dets_del(T, From, To), ok = dets:sync(T), 0 end),
    ok = dets:close(T),
    ok = file:delete(File),
    [{insert, I}, {lookup, L}, {delete, D}].

dets_ins(_T, I, To) when I >= To -> ok;
dets_ins(T, I, To) -> ok = dets:insert(T, {I, I}), dets_ins(T, I + 1, To).

dets_look(_T, I, To, Acc) when I >= To -> Acc;
dets_look(T, I, To, Acc) -> dets_look(T, I + 1, To, Acc + length(dets:lookup(T, I))).

dets_del(_T, I, To) when I >= To -> ok;
dets_del(T, I, To) -> ok = dets:delete(T, I), dets_del(T, I + 1, To).

dets_sync_each(N, Dir) ->
    {T, File} = dets_open(set, Dir),
    {S, _} = timed(1, N, fun(From, To) -> dets_ins_sync(T, From, To), 0 end),
    ok = dets:close(T),
    ok = file:delete(File),
    emit_table("dets/set/insert_sync_each", 1, N, S).

dets_ins_sync(_T, I, To) when I >= To -> ok;
dets_ins_sync(T, I, To) ->
    ok = dets:insert(T, {I, I}),
    ok = dets:sync(T),
    dets_ins_sync(T, I + 1, To).

%% ---------------------------------------------------------------- the frequency server

alloc(Kind, Shards0, Clients, Seconds, Pool) ->
    {Entry, Shards, Stop} = start(Kind, Shards0, Pool),
    Parent = self(),
    Pids = [spawn_link(fun() -> client(Entry, Parent) end) || _ <- lists:seq(1, Clients)],
    [receive {ready, Pid} -> ok end || Pid <- Pids],
    T0 = now_ns(),
    Deadline = erlang:monotonic_time() + erlang:convert_time_unit(round(Seconds * 1.0e9),
                                                                  nanosecond, native),
    [Pid ! {go, Deadline} || Pid <- Pids],
    Rs = [receive {done, Pid, Pairs, NoFreq} -> {Pairs, NoFreq} end || Pid <- Pids],
    Secs = (now_ns() - T0) / 1.0e9,
    Stop(),
    Pairs = lists:sum([P || {P, _} <- Rs]),
    NoFreq = lists:sum([E || {_, E} <- Rs]),
    emit("\"workload\":\"alloc/~s\",\"shards\":~b,\"clients\":~b,\"pool_size\":~b,"
         "\"seconds\":~.3f,\"pairs_per_sec\":~.1f,\"ops_per_sec\":~.1f,\"no_frequency\":~b",
         [Kind, Shards, Clients, Pool, Secs, Pairs / Secs, 2 * Pairs / Secs, NoFreq]),
    ok.

start(single, _, Pool) ->
    S = spawn_link(fun() -> server(0, Pool - 1, none, 0) end),
    {S, 1, fun() -> ok = call(S, stop) end};
start(router, Shards, Pool) ->
    Size = (Pool + Shards - 1) div Shards,
    R = spawn_link(fun() -> router_init(Shards, Size, Pool) end),
    {R, Shards, fun() -> ok = call(R, stop) end}.

call(Server, Msg) ->
    Server ! {request, self(), Msg},
    receive {reply, Reply} -> Reply end.

client(Entry, Parent) ->
    Parent ! {ready, self()},
    receive {go, Deadline} -> ok end,
    client_loop(Entry, Parent, Deadline, 0, 0).

client_loop(Entry, Parent, Deadline, Pairs, NoFreq) ->
    case erlang:monotonic_time() < Deadline of
        false ->
            Parent ! {done, self(), Pairs, NoFreq};
        true ->
            case call(Entry, allocate) of
                {ok, Freq} ->
                    ok = call(Entry, {deallocate, Freq}),
                    client_loop(Entry, Parent, Deadline, Pairs + 1, NoFreq);
                {error, no_frequency} ->
                    client_loop(Entry, Parent, Deadline, Pairs, NoFreq + 1)
            end
    end.

%% The course's back end: state {Free, Allocated}, Free a list, Allocated [{Freq, Pid}].
%% Router is the router's pid (told when an optimistic count was wrong) or none.
server(First, Last, Router, Index) ->
    server_loop({lists:seq(First, Last), []}, Router, Index).

server_loop(State, Router, Index) ->
    receive
        {request, Pid, allocate} ->
            {NewState, Reply} = allocate(State, Pid),
            Ok = element(1, Reply) =:= ok,
            Pid ! {reply, Reply},
            Ok orelse adjust(Router, Index, 1),
            server_loop(NewState, Router, Index);
        {request, Pid, {deallocate, Freq}} ->
            {NewState, Reply} = deallocate(State, Freq, Pid),
            Pid ! {reply, Reply},
            Reply =:= ok orelse adjust(Router, Index, -1),
            server_loop(NewState, Router, Index);
        {request, Pid, stop} ->
            Pid ! {reply, ok}
    end.

%% The router counted this back end's free frequencies optimistically; correct it.
adjust(none, _Index, _Delta) -> true;
adjust(Router, Index, Delta) -> Router ! {adjust, Index, Delta}, true.

allocate({[], Allocated}, _Pid) ->
    {{[], Allocated}, {error, no_frequency}};
allocate({[Freq | Free], Allocated}, Pid) ->
    {{Free, [{Freq, Pid} | Allocated]}, {ok, Freq}}.

deallocate({Free, Allocated} = State, Freq, Pid) ->
    case lists:keyfind(Freq, 1, Allocated) of
        {Freq, Pid} -> {{[Freq | Free], lists:keydelete(Freq, 1, Allocated)}, ok};
        _ -> {State, {error, not_allocated}}
    end.

%% The router: back ends in a tuple, and its count of each one's free frequencies.
router_init(Shards, Size, Pool) ->
    Self = self(),
    Backs = [begin
                 First = (I - 1) * Size,
                 Last = min(I * Size, Pool) - 1,
                 {spawn_link(fun() -> server(First, Last, Self, I) end), Last - First + 1}
             end
             || I <- lists:seq(1, Shards)],
    router_loop(list_to_tuple([P || {P, _} <- Backs]),
                list_to_tuple([C || {_, C} <- Backs]), Size).

router_loop(Backs, Counts, Size) ->
    receive
        {request, _Pid, allocate} = Msg ->
            I = most_free(Counts, 2, tuple_size(Counts), 1),
            element(I, Backs) ! Msg,
            router_loop(Backs, setelement(I, Counts, element(I, Counts) - 1), Size);
        {request, Pid, {deallocate, Freq}} = Msg ->
            I = Freq div Size + 1,
            case is_integer(Freq) andalso I >= 1 andalso I =< tuple_size(Backs) of
                true ->
                    element(I, Backs) ! Msg,
                    router_loop(Backs, setelement(I, Counts, element(I, Counts) + 1), Size);
                false ->
                    Pid ! {reply, {error, not_allocated}},
                    router_loop(Backs, Counts, Size)
            end;
        {adjust, I, Delta} ->
            router_loop(Backs, setelement(I, Counts, element(I, Counts) + Delta), Size);
        {request, Pid, stop} ->
            [ok = call(B, stop) || B <- tuple_to_list(Backs)],
            Pid ! {reply, ok}
    end.

%% The index of the largest count; ties go to the lowest index.
most_free(_Counts, I, N, Best) when I > N -> Best;
most_free(Counts, I, N, Best) ->
    case element(I, Counts) > element(Best, Counts) of
        true -> most_free(Counts, I + 1, N, I);
        false -> most_free(Counts, I + 1, N, Best)
    end.

%% ---------------------------------------------------------------- cluster router

cluster_router(Nodes0, Shards, Pool, Replicas) ->
    Nodes = [list_to_atom(N) || N <- Nodes0],
    [pong = wait_pong(N, 50) || N <- Nodes, N =/= node()],
    Size = (Pool + Shards - 1) div Shards,
    Self = self(),
    N = length(Nodes),
    Backs = [begin
                 First = (I - 1) * Size,
                 Last = min(I * Size, Pool) - 1,
                 State = {lists:seq(First, Last), []},
                 Node = lists:nth((I - 1) rem N + 1, Nodes),
                 Back = case Replicas of
                            1 ->
                                spawn_link(Node, fun() -> gserver(State, Self, I) end);
                            2 ->
                                BackupNode = lists:nth(I rem N + 1, Nodes),
                                Backup = spawn_link(BackupNode, fun() -> gbackup(State) end),
                                spawn_link(Node, fun() -> rserver(State, Self, I, Backup) end)
                        end,
                 {Back, Last - First + 1}
             end
             || I <- lists:seq(1, Shards)],
    register(frequency, self()),
    io:format("cluster_router ~s serving ~b shards on ~p, ~b replica(s)~n",
              [node(), Shards, Nodes, Replicas]),
    grouter_loop(list_to_tuple([P || {P, _} <- Backs]),
                 list_to_tuple([C || {_, C} <- Backs]), Size).

%% A back-end node registered with epmd may not accept connections yet: ask again, bounded.
wait_pong(Node, 0) -> net_adm:ping(Node);
wait_pong(Node, Tries) ->
    case net_adm:ping(Node) of
        pong -> pong;
        pang -> timer:sleep(100), wait_pong(Node, Tries - 1)
    end.

grouter_loop(Backs, Counts, Size) ->
    receive
        {'$gen_call', _From, allocate} = Msg ->
            I = most_free(Counts, 2, tuple_size(Counts), 1),
            element(I, Backs) ! Msg,
            grouter_loop(Backs, setelement(I, Counts, element(I, Counts) - 1), Size);
        {'$gen_call', From, {deallocate, Freq}} = Msg ->
            I = Freq div Size + 1,
            case is_integer(Freq) andalso I >= 1 andalso I =< tuple_size(Backs) of
                true ->
                    element(I, Backs) ! Msg,
                    grouter_loop(Backs, setelement(I, Counts, element(I, Counts) + 1), Size);
                false ->
                    gen:reply(From, {error, not_allocated}),
                    grouter_loop(Backs, Counts, Size)
            end;
        {adjust, I, Delta} ->
            grouter_loop(Backs, setelement(I, Counts, element(I, Counts) + Delta), Size);
        _ ->
            grouter_loop(Backs, Counts, Size)
    end.

%% The course's back end answering gen_server calls forwarded by the router.
gserver(State, Router, Index) ->
    receive
        {'$gen_call', {Pid, _} = From, allocate} ->
            {New, Reply} = allocate(State, Pid),
            gen:reply(From, Reply),
            element(1, Reply) =:= ok orelse adjust(Router, Index, 1),
            gserver(New, Router, Index);
        {'$gen_call', {Pid, _} = From, {deallocate, Freq}} ->
            {New, Reply} = deallocate(State, Freq, Pid),
            gen:reply(From, Reply),
            Reply =:= ok orelse adjust(Router, Index, -1),
            gserver(New, Router, Index)
    end.

%% The replicated back end: as gserver, but every change that succeeds goes to the backup
%% first, and the client is answered after the backup's acknowledgement.
rserver(State, Router, Index, Backup) ->
    receive
        {'$gen_call', {Pid, _} = From, allocate} ->
            {New, Reply} = allocate(State, Pid),
            case Reply of
                {ok, _} -> replicate(Backup, Index, {allocate, Pid, Reply});
                _ -> adjust(Router, Index, 1)
            end,
            gen:reply(From, Reply),
            rserver(New, Router, Index, Backup);
        {'$gen_call', {Pid, _} = From, {deallocate, Freq}} ->
            {New, Reply} = deallocate(State, Freq, Pid),
            case Reply of
                ok -> replicate(Backup, Index, {deallocate, Freq, Pid});
                _ -> adjust(Router, Index, -1)
            end,
            gen:reply(From, Reply),
            rserver(New, Router, Index, Backup)
    end.

%% Sends one change to the backup and waits, bounded, for its acknowledgement (the reference
%% made just before the send lets the receive skip the queued client calls).
replicate(Backup, Index, Change) ->
    Ref = make_ref(),
    Backup ! {replicate, self(), Ref, Change},
    receive
        {replicated, Ref} -> ok
    after 5000 ->
        exit({backup_timeout, Index})
    end.

%% The backup: the primary's state, changed by the same functions; a change that does not
%% give the primary's result there means the copies differ, and the backup crashes.
gbackup(State) ->
    receive
        {replicate, Primary, Ref, {allocate, Pid, Reply}} ->
            {New, Reply} = allocate(State, Pid),
            Primary ! {replicated, Ref},
            gbackup(New);
        {replicate, Primary, Ref, {deallocate, Freq, Pid}} ->
            {New, ok} = deallocate(State, Freq, Pid),
            Primary ! {replicated, Ref},
            gbackup(New)
    end.

%% ---------------------------------------------------------------- distribution

dist_clients(Node, Clients, Seconds, Side) ->
    pong = wait_pong(Node, 50), % a first ping to a node just started was seen to fail
    {ok, F0} = gen_server:call({frequency, Node}, allocate),
    ok = gen_server:call({frequency, Node}, {deallocate, F0}),
    Parent = self(),
    Pids = [spawn_link(fun() -> dist_client(Node, Parent) end) || _ <- lists:seq(1, Clients)],
    [receive {ready, Pid} -> ok end || Pid <- Pids],
    T0 = now_ns(),
    Deadline = erlang:monotonic_time() + erlang:convert_time_unit(round(Seconds * 1.0e9),
                                                                  nanosecond, native),
    [Pid ! {go, Deadline} || Pid <- Pids],
    Rs = [receive {done, Pid, Pairs, NoFreq} -> {Pairs, NoFreq} end || Pid <- Pids],
    Secs = (now_ns() - T0) / 1.0e9,
    Pairs = lists:sum([P || {P, _} <- Rs]),
    NoFreq = lists:sum([E || {_, E} <- Rs]),
    io:format("{\"side\":\"~s\",\"workload\":\"dist/beam_clients\",\"node\":\"~s\","
              "\"clients\":~b,\"seconds\":~.3f,\"pairs_per_sec\":~.1f,\"ops_per_sec\":~.1f,"
              "\"no_frequency\":~b}~n",
              [Side, Node, Clients, Secs, Pairs / Secs, 2 * Pairs / Secs, NoFreq]),
    ok.

dist_client(Node, Parent) ->
    Parent ! {ready, self()},
    receive {go, Deadline} -> ok end,
    dist_loop({frequency, Node}, Parent, Deadline, 0, 0).

dist_loop(Server, Parent, Deadline, Pairs, NoFreq) ->
    case erlang:monotonic_time() < Deadline of
        false ->
            Parent ! {done, self(), Pairs, NoFreq};
        true ->
            case gen_server:call(Server, allocate) of
                {ok, Freq} ->
                    ok = gen_server:call(Server, {deallocate, Freq}),
                    dist_loop(Server, Parent, Deadline, Pairs + 1, NoFreq);
                {error, no_frequency} ->
                    dist_loop(Server, Parent, Deadline, Pairs, NoFreq + 1)
            end
    end.
