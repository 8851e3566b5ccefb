%% freq_client: the BEAM clients of the distribution tests (tests/dist_beam.rs).
%%
%% Each scenario is called as `freq_client:run(Scenario, [Node | Args])` from
%% `erl -sname ... -setcookie ... -noshell -pa EBIN -eval ...`, checks the replies of the
%% server registered as `frequency` on Node itself (a badmatch is a failure), and prints
%% one line the Rust test parses, then halts:
%%
%%   RESULT ok key=value key=value ...     (values: integers, atoms, or comma-separated lists)
%%   RESULT error <the exception, ~w>      (exit status 1)
%%
%% The protocol is the one of the README's "Running a node": the raw form of the course's
%% frequency2.erl (`{request, Pid, Msg}` answered by `Pid ! {reply, R}`) and the gen_server
%% form (`gen_server:call({frequency, Node}, Request)`).

-module(freq_client).

-export([run/2]).
-export([course_gen/2, course_raw/2, refusals/3, named/2, exit_releases/2,
         hold/3, wait_released/3, wait_allocated/3, ping/1, noproc/1, storm/4, raw_stop/1,
         acked_storm/2, held_as/2, cluster_storm/3]).

-define(TIMEOUT, 10000).

%% ------------------------------------------------------------------ the wrapper

run(Fun, Args) ->
    Code = try apply(?MODULE, Fun, Args) of
               Facts -> print_result(Facts), 0
           catch
               Class:Reason:Stack ->
                   io:format("RESULT error ~w~n", [{Class, Reason, Stack}]),
                   1
           end,
    halt(Code).

print_result(Facts) ->
    io:format("RESULT ok~s~n", [[[" ", key(K), "=", value(V)] || {K, V} <- Facts]]).

key(K) when is_atom(K) -> atom_to_list(K);
key(K) when is_binary(K) -> binary_to_list(K).

value(V) when is_integer(V) -> integer_to_list(V);
value(V) when is_atom(V) -> atom_to_list(V);
value(V) when is_list(V) -> lists:join(",", [value(X) || X <- V]).

%% ------------------------------------------------------------------ calls

call(Node, Request) ->
    gen_server:call({frequency, Node}, Request, ?TIMEOUT).

raw(Node, Msg) ->
    {frequency, Node} ! {request, self(), Msg},
    receive {reply, Reply} -> Reply after ?TIMEOUT -> error({no_reply, Msg}) end.

status(Node) ->
    {ok, #{pool := Pool, free := Free, allocated := Allocated, shards := Shards}} =
        call(Node, status),
    %% The shards add up to the totals.
    Free = lists:sum([maps:get(free, Sh) || Sh <- Shards]),
    Allocated = lists:sum([maps:get(allocated, Sh) || Sh <- Shards]),
    true = Shards =/= [],
    {Pool, Free, Allocated}.

%% ------------------------------------------------------------------ scenarios

%% The course scenario through gen_server: allocate the whole pool, no_frequency at
%% exhaustion, deallocate one and get it back, deallocate all; the pool is whole again.
course_gen(Node, Pool) ->
    course(Node, Pool, fun(Req) -> call(Node, Req) end).

%% The same through the raw messages of frequency2.erl.
course_raw(Node, Pool) ->
    course(Node, Pool, fun(Req) -> raw(Node, Req) end).

course(Node, Pool, Call) ->
    {Pool, Pool, 0} = status(Node),
    Fs = [begin {ok, F} = Call(allocate), F end || _ <- lists:seq(1, Pool)],
    Pool = length(lists:usort(Fs)),
    {error, no_frequency} = Call(allocate),
    {ok, Held} = call(Node, held),
    Held = lists:sort(Fs),
    {Pool, 0, Pool} = status(Node),
    Back = lists:nth((Pool + 1) div 2, Fs),
    ok = Call({deallocate, Back}),
    {Pool, 1, _} = status(Node),
    {ok, Back} = Call(allocate),
    {error, no_frequency} = Call(allocate),
    [ok = Call({deallocate, F}) || F <- Fs],
    {Pool, Pool, 0} = status(Node),
    ok = call(Node, check),
    [{pool, Pool}, {frequencies, lists:sort(Fs)}, {reused, Back}].

%% Each refusal, through both forms where the form has it; nothing changes state.
%% First..Last is the pool.
refusals(Node, First, Last) ->
    Pool = Last - First + 1,
    {ok, F} = call(Node, allocate),
    ok = call(Node, {deallocate, F}),
    {error, not_allocated} = call(Node, {deallocate, F}),
    {error, not_allocated} = raw(Node, {deallocate, F}),
    {error, unknown_frequency} = call(Node, {deallocate, Last + 1000}),
    {error, unknown_frequency} = raw(Node, {deallocate, Last + 1000}),
    {ok, G} = call(Node, allocate),
    Self = self(),
    Other = spawn(fun() ->
                          Self ! {other, call(Node, {deallocate, G}), raw(Node, {deallocate, G})}
                  end),
    NotOwner = receive {other, R1, R2} -> {R1, R2} after ?TIMEOUT -> error(other_timeout) end,
    {{error, not_owner}, {error, not_owner}} = NotOwner,
    is_pid(Other) orelse error(no_pid),
    Bad = [call(Node, R) || R <- [bogus, {deallocate, foo}, {deallocate, <<"7">>},
                                  {allocate, 0}, {allocate, -3}, {allocate, foo},
                                  {deallocate, 1, 2}, {allocate, 1, 2, 3}, "allocate", 42]],
    Bad = [{error, badarg} || _ <- Bad],
    {Pool, _, 1} = status(Node),
    ok = call(Node, {deallocate, G}),
    {Pool, Pool, 0} = status(Node),
    ok = call(Node, check),
    [{not_allocated, F}, {not_owner, G}, {badarg, length(Bad)}].

%% What the crate adds: client names instead of the Pid, held, release, leases.
named(Node, Pool) ->
    {ok, A} = call(Node, {allocate_as, <<"alice">>}),
    {ok, B} = call(Node, {allocate_as, alice}),
    {ok, Alice} = call(Node, {held_as, <<"alice">>}),
    Alice = lists:sort([A, B]),
    {error, not_owner} = call(Node, {deallocate, A}),
    {error, not_owner} = call(Node, {deallocate_as, <<"bob">>, A}),
    ok = call(Node, {deallocate_as, <<"alice">>, A}),
    {ok, [B]} = call(Node, {release_as, alice}),
    {ok, []} = call(Node, {held_as, alice}),
    {ok, C} = call(Node, allocate),
    {ok, D} = call(Node, allocate),
    {ok, Mine} = call(Node, held),
    Mine = lists:sort([C, D]),
    {ok, Mine} = call(Node, release),
    {ok, []} = call(Node, held),
    {Pool, Pool, 0} = status(Node),
    %% A lease: the frequency comes back on its own.
    {ok, L} = call(Node, {allocate, 200}),
    {Pool, _, 1} = status(Node),
    Waited = wait_free(Node, Pool, 20000),
    {error, not_allocated} = call(Node, {deallocate, L}),
    ok = call(Node, check),
    [{alice, Alice}, {released, Mine}, {lease, L}, {lease_back_ms, Waited}].

%% A process that allocates and then exits (normally, or crashing) releases what it held.
exit_releases(Node, Pool) ->
    Results = [exit_one(Node, Pool, How) || How <- [normal, crash, kill]],
    ok = call(Node, check),
    [{pool, Pool} | lists:append(Results)].

exit_one(Node, Pool, How) ->
    Self = self(),
    {Pid, Ref} = spawn_monitor(fun() ->
                                       Fs = [begin {ok, F} = call(Node, allocate), F end
                                             || _ <- lists:seq(1, 3)],
                                       Self ! {held, self(), Fs},
                                       receive go -> ok end,
                                       case How of
                                           normal -> ok;
                                           crash -> error(boom);
                                           kill -> receive after infinity -> ok end
                                       end
                               end),
    Fs = receive {held, Pid, Held} -> Held after ?TIMEOUT -> error(held_timeout) end,
    {Pool, Free0, 3} = status(Node),
    Free0 = Pool - 3,
    case How of
        kill -> exit(Pid, kill);
        _ -> Pid ! go
    end,
    receive {'DOWN', Ref, process, Pid, _} -> ok end,
    Waited = wait_free(Node, Pool, 20000),
    %% The released frequencies are free for the next caller.
    Again = [begin {ok, F} = call(Node, allocate), F end || _ <- lists:seq(1, Pool)],
    true = lists:all(fun(F) -> lists:member(F, Again) end, Fs),
    [ok = call(Node, {deallocate, F}) || F <- Again],
    [{list_to_atom("held_" ++ atom_to_list(How)), Fs},
     {list_to_atom("released_" ++ atom_to_list(How) ++ "_ms"), Waited}].

%% N processes of this node each allocate one frequency; prints the RESULT line; then
%% `halt` halts the node at once (its connection drops) or `wait` blocks until killed.
hold(Node, N, Then) ->
    Self = self(),
    Pids = [spawn(fun() ->
                          {ok, F} = call(Node, allocate),
                          Self ! {held, self(), F},
                          receive after infinity -> ok end
                  end)
            || _ <- lists:seq(1, N)],
    Fs = [receive {held, P, F} -> F after ?TIMEOUT -> error(held_timeout) end || P <- Pids],
    {_, _, Allocated} = status(Node),
    true = Allocated >= N,
    print_result([{held, lists:sort(Fs)}]),
    case Then of
        halt -> halt(0);
        wait -> receive after infinity -> ok end
    end.

%% Waits (up to TimeoutMs) until the whole pool is free again; the time it took.
wait_released(Node, Pool, TimeoutMs) ->
    Waited = wait_free(Node, Pool, TimeoutMs),
    ok = call(Node, check),
    [{pool, Pool}, {waited_ms, Waited}].

%% Waits (up to TimeoutMs) until exactly N frequencies are allocated; the time it took.
wait_allocated(Node, N, TimeoutMs) ->
    T0 = erlang:monotonic_time(millisecond),
    Deadline = T0 + TimeoutMs,
    Loop = fun Loop() ->
                   case status(Node) of
                       {Pool, Free, N} ->
                           Pool = Free + N,
                           erlang:monotonic_time(millisecond) - T0;
                       Other ->
                           erlang:monotonic_time(millisecond) < Deadline
                               orelse error({allocated_not, N, Other}),
                           receive after 2 -> ok end,
                           Loop()
                   end
           end,
    Waited = Loop(),
    ok = call(Node, check),
    [{allocated, N}, {waited_ms, Waited}].

%% What each of the client names held (sorted), as facts name=F1,F2,...
held_as(Node, Names) ->
    [begin {ok, Fs} = call(Node, {held_as, N}), {N, Fs} end || N <- Names] ++
        [{check, case call(Node, check) of ok -> ok; _ -> violations end}].

%% The crash test's storm: Workers processes, one per client name w1..wN (names are not
%% released on exit), loop allocate_as / deallocate_as, each holding up to three frequencies,
%% and print every request before it is sent and every reply as it arrives:
%%   REQ a Name | ACK a Name F | ACK n Name           (allocate; n: no_frequency)
%%   REQ d Name F | ACK d Name F                      (deallocate)
%% When the node dies the workers' calls fail and they exit; then this prints `STORM over`
%% and halts, so every line printed is on stdout before the test reads the end.
acked_storm(Node, Workers) ->
    pong = net_adm:ping(Node),
    Names = [list_to_atom("w" ++ integer_to_list(I)) || I <- lists:seq(1, Workers)],
    Refs = [element(2, spawn_monitor(fun() -> acked_worker(Node, N, held_now(Node, N), 1) end)) || N <- Names],
    io:format("STORM started~n"),
    [receive {'DOWN', R, process, _, _} -> ok end || R <- Refs],
    io:format("STORM over~n"),
    halt(0).

held_now(Node, Name) ->
    {ok, Fs} = call(Node, {held_as, Name}),
    Fs.

acked_worker(Node, Name, Holding, I) ->
    case length(Holding) < 3 andalso (Holding =:= [] orelse I rem 2 =:= 0) of
        true ->
            io:format("REQ a ~s~n", [Name]),
            case call(Node, {allocate_as, Name}) of
                {ok, F} ->
                    io:format("ACK a ~s ~b~n", [Name, F]),
                    acked_worker(Node, Name, Holding ++ [F], I + 1);
                {error, no_frequency} ->
                    io:format("ACK n ~s~n", [Name]),
                    acked_worker(Node, Name, Holding, I + 1)
            end;
        false ->
            [F | Rest] = Holding,
            io:format("REQ d ~s ~b~n", [Name, F]),
            ok = call(Node, {deallocate_as, Name, F}),
            io:format("ACK d ~s ~b~n", [Name, F]),
            acked_worker(Node, Name, Rest, I + 1)
    end.

%% net_adm:ping/1 (pong, or pang with a wrong cookie).
ping(Node) ->
    [{ping, net_adm:ping(Node)}].

%% A call to a name the node does not have fails with noproc at once (not by timeout).
noproc(Node) ->
    pong = net_adm:ping(Node),
    T0 = erlang:monotonic_time(millisecond),
    Reason = try gen_server:call({no_such_name, Node}, hello, 30000) of
                 Reply -> error({unexpected_reply, Reply})
             catch
                 exit:{R, {gen_server, call, _}} -> R
             end,
    Ms = erlang:monotonic_time(millisecond) - T0,
    [{reason, Reason}, {ms, Ms}].

%% Procs processes storm allocate/deallocate for Rounds rounds each, holding up to two
%% frequencies at a time. An ETS table records who holds what as the replies arrive
%% (insert_new after {ok, F}, delete before deallocating): a frequency held twice is caught
%% as it happens. Then each process checks `held` against what it holds, the totals are
%% checked against `status` (free + allocated = pool), everything is given back and `check`
%% must say ok.
storm(Node, Procs, Rounds, Pool) ->
    T = ets:new(holders, [public, set, {write_concurrency, true}]),
    Self = self(),
    Pids = [spawn_link(fun() -> stormer(Node, T, Self, Rounds) end) || _ <- lists:seq(1, Procs)],
    [receive {ready, P} -> ok end || P <- Pids],
    T0 = erlang:monotonic_time(millisecond),
    [P ! go || P <- Pids],
    Reports = [receive {done, P, R} -> R after 120000 -> error(storm_timeout) end || P <- Pids],
    Ms = erlang:monotonic_time(millisecond) - T0,
    Doubles = lists:sum([D || {_, _, D, _} <- Reports]),
    Pairs = lists:sum([A || {A, _, _, _} <- Reports]),
    NoFreq = lists:sum([E || {_, E, _, _} <- Reports]),
    HeldNow = lists:append([H || {_, _, _, H} <- Reports]),
    Held = length(HeldNow),
    Held = length(lists:usort(HeldNow)),
    Held = ets:info(T, size),
    {Pool, Free, Held} = status(Node),
    Pool = Free + Held,
    ok = call(Node, check),
    [P ! give_back || P <- Pids],
    [receive {given_back, P} -> ok after ?TIMEOUT -> error(give_back_timeout) end || P <- Pids],
    {Pool, Pool, 0} = status(Node),
    ok = call(Node, check),
    [{procs, Procs}, {pairs, Pairs}, {no_frequency, NoFreq}, {doubles, Doubles},
     {held_mid, Held}, {free_mid, Free}, {ms, Ms}].

stormer(Node, T, Parent, Rounds) ->
    Parent ! {ready, self()},
    receive go -> ok end,
    {Pairs, NoFreq, Doubles, Holding} = storm_loop(Node, T, Rounds, [], 0, 0, 0),
    {ok, Held} = call(Node, held),
    Held = lists:sort(Holding),
    Parent ! {done, self(), {Pairs, NoFreq, Doubles, Holding}},
    receive give_back -> ok end,
    [begin true = ets:delete(T, F), ok = call(Node, {deallocate, F}) end || F <- Holding],
    Parent ! {given_back, self()}.

storm_loop(_Node, _T, 0, Holding, Pairs, NoFreq, Doubles) ->
    {Pairs, NoFreq, Doubles, Holding};
storm_loop(Node, T, Rounds, Holding, Pairs, NoFreq, Doubles) ->
    case call(Node, allocate) of
        {ok, F} ->
            D = case ets:insert_new(T, {F, self()}) of true -> 0; false -> 1 end,
            Holding1 = [F | Holding],
            case length(Holding1) >= 2 orelse Rounds rem 3 =:= 0 of
                true ->
                    Oldest = lists:last(Holding1),
                    true = ets:delete(T, Oldest),
                    ok = call(Node, {deallocate, Oldest}),
                    storm_loop(Node, T, Rounds - 1, lists:droplast(Holding1), Pairs + 1,
                               NoFreq, Doubles + D);
                false ->
                    storm_loop(Node, T, Rounds - 1, Holding1, Pairs, NoFreq, Doubles + D)
            end;
        {error, no_frequency} ->
            case Holding of
                [] ->
                    storm_loop(Node, T, Rounds - 1, Holding, Pairs, NoFreq + 1, Doubles);
                _ ->
                    Oldest = lists:last(Holding),
                    true = ets:delete(T, Oldest),
                    ok = call(Node, {deallocate, Oldest}),
                    storm_loop(Node, T, Rounds - 1, lists:droplast(Holding), Pairs + 1,
                               NoFreq + 1, Doubles)
            end
    end.

%% The raw form's stop: {reply, stopped} and the node shuts down in order, or, with
%% --no-remote-stop, {reply, {error, not_allowed}}.
raw_stop(Node) ->
    case raw(Node, stop) of
        stopped -> [{stop, stopped}];
        {error, not_allowed} -> [{stop, not_allowed}]
    end.

%% ------------------------------------------------------------------ helpers

%% Polls status until Pool frequencies are free (a bounded wait: the deadline only bounds a
%% failure); returns the milliseconds it took.
wait_free(Node, Pool, TimeoutMs) ->
    T0 = erlang:monotonic_time(millisecond),
    wait_free(Node, Pool, T0, T0 + TimeoutMs).

wait_free(Node, Pool, T0, Deadline) ->
    case status(Node) of
        {Pool, Pool, 0} ->
            erlang:monotonic_time(millisecond) - T0;
        Other ->
            Now = erlang:monotonic_time(millisecond),
            Now < Deadline orelse error({not_released, Other}),
            receive after 2 -> ok end,
            wait_free(Node, Pool, T0, Deadline)
    end.

%% The cluster test's storm (tests/dist_cluster.rs): Workers processes, names w1..wN, each
%% doing Ops calls through one front-end Node while other nodes of the cluster die and come
%% back, holding up to three frequencies, printing as acked_storm does and also:
%%   ACK e a Name | ACK e d Name F    (shard_unreachable: nothing was sent, nothing changed)
%%   ACK u Name                       (shard_failed: lost in flight, may have happened; the
%%                                     worker stops, its last REQ stays uncertain)
%% `STORM over` once every worker is done; `CRASH Reason` for a worker that died on an
%% unexpected reply.
cluster_storm(Node, Workers, Ops) ->
    pong = net_adm:ping(Node),
    Names = [list_to_atom("w" ++ integer_to_list(I)) || I <- lists:seq(1, Workers)],
    Refs = [element(2, spawn_monitor(fun() -> cluster_worker(Node, N, held_now(Node, N), Ops) end)) || N <- Names],
    io:format("STORM started~n"),
    %% A worker that ends other than normally met a reply it did not expect: say so.
    [receive {'DOWN', R, process, _, Why} ->
         Why =:= normal orelse io:format("CRASH ~p~n", [Why])
     end || R <- Refs],
    io:format("STORM over~n"),
    halt(0).

cluster_worker(_Node, _Name, _Holding, 0) ->
    ok;
cluster_worker(Node, Name, Holding, I) ->
    case length(Holding) < 3 andalso (Holding =:= [] orelse I rem 2 =:= 0) of
        true ->
            io:format("REQ a ~s~n", [Name]),
            case call(Node, {allocate_as, Name}) of
                {ok, F} ->
                    io:format("ACK a ~s ~b~n", [Name, F]),
                    cluster_worker(Node, Name, Holding ++ [F], I - 1);
                {error, no_frequency} ->
                    io:format("ACK n ~s~n", [Name]),
                    cluster_worker(Node, Name, Holding, I - 1);
                {error, shard_unreachable, _, _} ->
                    io:format("ACK e a ~s~n", [Name]),
                    cluster_worker(Node, Name, Holding, I - 1);
                {error, shard_failed, _, _} ->
                    io:format("ACK u ~s~n", [Name])
            end;
        false ->
            [F | Rest] = Holding,
            io:format("REQ d ~s ~b~n", [Name, F]),
            case call(Node, {deallocate_as, Name, F}) of
                ok ->
                    io:format("ACK d ~s ~b~n", [Name, F]),
                    cluster_worker(Node, Name, Rest, I - 1);
                {error, shard_unreachable, _, _} ->
                    %% Still held (its shard's node is down): try the others first.
                    io:format("ACK e d ~s ~b~n", [Name, F]),
                    cluster_worker(Node, Name, Rest ++ [F], I - 1);
                {error, shard_failed, _, _} ->
                    io:format("ACK u ~s~n", [Name])
            end
    end.
