%% frequency_beam: the course's frequency server on a BEAM node, speaking the protocol the
%% freqalloc node speaks under the registered name `frequency` (README, "Running a node").
%%
%% Two uses: the distribution tests run their Erlang clients (freq_client.erl) against it to
%% check the clients themselves, and benches/beam/compare.sh uses it as the BEAM baseline of
%% the distribution rows (BEAM clients calling a BEAM node).
%%
%% The state is the course's: {Free, Allocated}, Free a list, Allocated [{Freq, Owner}]
%% (Owner {pid, Pid} or {name, Binary}); plus one monitor per owning Pid so that what a
%% process held is released when it exits or its node disconnects (the course's link and
%% trap_exit lesson, with monitors).
%%
%%   erl -sname freqb@localhost -setcookie C -noshell -pa EBIN \
%%       -eval 'frequency_beam:start_node(0, 99)'
%%
%% prints `frequency_beam freqb@localhost serving (pool 100, 1 shards)` and serves until
%% the node stops (SIGTERM, or a raw `{request, Pid, stop}`).

-module(frequency_beam).
-behaviour(gen_server).

-export([start_node/2, start_link/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-record(st, {first, last, free = [], allocated = [], monitors = #{}}).

%% Starts the server as `frequency` over First..Last, prints the readiness line, then blocks
%% (the -eval process keeps the node alive).
start_node(First, Last) ->
    {ok, _} = start_link(First, Last),
    io:format("frequency_beam ~s serving (pool ~b, 1 shards)~n", [node(), Last - First + 1]),
    receive after infinity -> ok end.

start_link(First, Last) ->
    gen_server:start_link({local, frequency}, ?MODULE, {First, Last}, []).

init({First, Last}) ->
    {ok, #st{first = First, last = Last, free = lists:seq(First, Last)}}.

%% ------------------------------------------------------------------ gen_server form

handle_call(allocate, {Pid, _}, S) ->
    reply(allocate({pid, Pid}, none, S));
handle_call({allocate, Lease}, {Pid, _}, S) when is_integer(Lease), Lease >= 1 ->
    reply(allocate({pid, Pid}, Lease, S));
handle_call({deallocate, F}, {Pid, _}, S) when is_integer(F) ->
    reply(deallocate(F, {pid, Pid}, S));
handle_call({allocate_as, C}, _From, S) ->
    with_name(C, S, fun(N) -> allocate({name, N}, none, S) end);
handle_call({allocate_as, C, Lease}, _From, S) when is_integer(Lease), Lease >= 1 ->
    with_name(C, S, fun(N) -> allocate({name, N}, Lease, S) end);
handle_call({deallocate_as, C, F}, _From, S) when is_integer(F) ->
    with_name(C, S, fun(N) -> deallocate(F, {name, N}, S) end);
handle_call(release, {Pid, _}, S) ->
    reply(release({pid, Pid}, S));
handle_call({release_as, C}, _From, S) ->
    with_name(C, S, fun(N) -> release({name, N}, S) end);
handle_call(held, {Pid, _}, S) ->
    {reply, {ok, held({pid, Pid}, S)}, S};
handle_call({held_as, C}, _From, S) ->
    with_name(C, S, fun(N) -> {{ok, held({name, N}, S)}, S} end);
handle_call(status, _From, S) ->
    {reply, {ok, status(S)}, S};
handle_call(check, _From, S) ->
    {reply, check(S), S};
handle_call(_Other, _From, S) ->
    {reply, {error, badarg}, S}.

handle_cast(_Msg, S) ->
    {noreply, S}.

%% ------------------------------------------------------------------ raw form, monitors

handle_info({request, Pid, allocate}, S) when is_pid(Pid) ->
    {Reply, S1} = allocate({pid, Pid}, none, S),
    Pid ! {reply, Reply},
    {noreply, S1};
handle_info({request, Pid, {deallocate, F}}, S) when is_pid(Pid), is_integer(F) ->
    {Reply, S1} = deallocate(F, {pid, Pid}, S),
    Pid ! {reply, Reply},
    {noreply, S1};
handle_info({request, Pid, stop}, S) when is_pid(Pid) ->
    Pid ! {reply, stopped},
    init:stop(),
    {noreply, S};
handle_info({request, Pid, _Bad}, S) when is_pid(Pid) ->
    Pid ! {reply, {error, badarg}},
    {noreply, S};
handle_info({'DOWN', _Ref, process, Pid, _Why}, S) ->
    {_, S1} = release({pid, Pid}, S#st{monitors = maps:remove(Pid, S#st.monitors)}),
    {noreply, S1};
handle_info({lease_expired, F, Owner}, S) ->
    case lists:keyfind(F, 1, S#st.allocated) of
        {F, Owner} -> {_, S1} = deallocate(F, Owner, S), {noreply, S1};
        _ -> {noreply, S}
    end;
handle_info(_Other, S) ->
    {noreply, S}.

%% ------------------------------------------------------------------ the course's state

reply({Reply, S}) -> {reply, Reply, S}.

with_name(C, S, F) when is_atom(C) -> with_name(atom_to_binary(C, utf8), S, F);
with_name(C, _S, F) when is_binary(C), byte_size(C) > 0 -> reply(F(C));
with_name(_C, S, _F) -> {reply, {error, badarg}, S}.

allocate(_Owner, _Lease, #st{free = []} = S) ->
    {{error, no_frequency}, S};
allocate(Owner, Lease, #st{free = [F | Free], allocated = Allocated} = S) ->
    Lease =:= none orelse erlang:send_after(Lease, self(), {lease_expired, F, Owner}),
    {{ok, F}, watch(Owner, S#st{free = Free, allocated = [{F, Owner} | Allocated]})}.

deallocate(F, _Owner, #st{first = First, last = Last} = S) when F < First; F > Last ->
    {{error, unknown_frequency}, S};
deallocate(F, Owner, #st{free = Free, allocated = Allocated} = S) ->
    case lists:keyfind(F, 1, Allocated) of
        {F, Owner} -> {ok, S#st{free = [F | Free], allocated = lists:keydelete(F, 1, Allocated)}};
        {F, _Other} -> {{error, not_owner}, S};
        false -> {{error, not_allocated}, S}
    end.

release(Owner, #st{free = Free, allocated = Allocated} = S) ->
    {Mine, Rest} = lists:partition(fun({_, O}) -> O =:= Owner end, Allocated),
    Fs = lists:sort([F || {F, _} <- Mine]),
    {{ok, Fs}, S#st{free = Fs ++ Free, allocated = Rest}}.

held(Owner, #st{allocated = Allocated}) ->
    lists:sort([F || {F, O} <- Allocated, O =:= Owner]).

watch({pid, Pid}, #st{monitors = M} = S) ->
    case maps:is_key(Pid, M) of
        true -> S;
        false -> S#st{monitors = M#{Pid => erlang:monitor(process, Pid)}}
    end;
watch({name, _}, S) ->
    S.

status(#st{first = First, last = Last, free = Free, allocated = Allocated}) ->
    NFree = length(Free),
    NAlloc = length(Allocated),
    #{pool => Last - First + 1, free => NFree, allocated => NAlloc,
      shards => [#{shard => 0, free => NFree, allocated => NAlloc}]}.

check(#st{first = First, last = Last, free = Free, allocated = Allocated}) ->
    All = lists:sort(Free ++ [F || {F, _} <- Allocated]),
    Violations =
        [<<"a frequency is in two places">> || length(lists:usort(All)) =/= length(All)] ++
        [<<"free + allocated is not the pool">> || lists:usort(All) =/= lists:seq(First, Last)],
    case Violations of
        [] -> ok;
        _ -> {error, {violations, Violations}}
    end.
