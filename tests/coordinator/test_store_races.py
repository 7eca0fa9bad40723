"""PostgreSQL like SQLite: what several threads or coordinator replicas do at once on one database, and one bad
result in a batch of others' — on a real SQLite file and a real PostgreSQL schema (the same tests for both)."""

import concurrent.futures
import random
import threading

import grpc
import pytest

from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.service.store import AlreadyEnrolled, BadToken, ConflictingResult, Store, token_hash
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents
from tests.coordinator.test_ingest import good_result

THREADS = 16


def at_once(n: int, fn) -> list:
    """fn(i) for i in range(n), each on its own thread, released together; each outcome or the exception raised."""
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:  # the outcome under test
            return exc

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture()
def replicas(db_url):
    """Two Store instances on one database, as two coordinator replicas hold it (each thread its own connection)."""
    stores = [Store(db_url), Store(db_url)]
    for n in range(3):
        stores[0].upsert_device(pb.DeviceInventory(device_id=f"dev-{n}", hostname="box"))
    yield stores
    for s in stores:
        s.close()


def enrolled(store: Store) -> list[str]:
    return [d for (d,) in store.db.query("SELECT device_id FROM agents ORDER BY device_id")]


@pytest.mark.parametrize("bound", [False, True])
def test_a_join_token_is_spent_exactly_once_under_concurrent_joins(replicas, bound):
    token = replicas[0].create_join_token({"site": "lab"}, 60, device_id="dev-x" if bound else None)
    outcomes = at_once(THREADS, lambda i: replicas[i % 2].redeem_join_token(token, "dev-x" if bound else f"dev-{i}"))
    secrets = [o for o in outcomes if isinstance(o, str)]
    assert len(secrets) == 1, outcomes
    assert all(isinstance(o, BadToken) for o in outcomes if not isinstance(o, str)), outcomes
    winner = f"dev-{outcomes.index(secrets[0])}" if not bound else "dev-x"
    assert enrolled(replicas[1]) == [winner]
    assert replicas[1].agent_secret_hash(winner) == token_hash(secrets[0])


def test_one_device_id_is_enrolled_once_by_concurrent_joins_with_different_tokens(replicas):
    tokens = [replicas[0].create_join_token({"n": str(i)}, 60) for i in range(THREADS)]
    outcomes = at_once(THREADS, lambda i: replicas[i % 2].redeem_join_token(tokens[i], "dev-y"))
    won = [i for i, o in enumerate(outcomes) if isinstance(o, str)]
    assert len(won) == 1, outcomes
    assert all(isinstance(o, AlreadyEnrolled) for o in outcomes if not isinstance(o, str)), outcomes
    assert replicas[1].agent_secret_hash("dev-y") == token_hash(outcomes[won[0]])
    assert replicas[1].device_labels()["dev-y"] == {"n": str(won[0])}
    # the losers' tokens stay unspent: each can still enroll another device
    loser = next(i for i in range(THREADS) if i != won[0])
    assert isinstance(replicas[0].redeem_join_token(tokens[loser], "dev-z"), str)


def racing_result(result_id: str, device_id: str, decode: float = 100.0) -> pb.ProfileResult:
    return pb.ProfileResult(result_id=result_id, device_id=device_id, model_name="smollm2-135m", quant="Q4_0",
                            request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0"),
                            decode_tokens_per_s=pb.Stat(mean=decode, samples=[decode]))


@pytest.mark.parametrize("with_jobs", [False, True])
def test_the_same_results_through_two_replicas_at_once_are_stored_once(replicas, with_jobs):
    ids = [f"r-{n}" for n in range(12)]
    devices = {rid: f"dev-{n % 3}" for n, rid in enumerate(ids)}
    leases = {}
    for rid in ids:
        if with_jobs:
            replicas[0].enqueue(devices[rid], pb.ProfileRequest(quant="Q4_0"))
            job = replicas[0].claim_job(devices[rid])
            leases[rid] = (job.job_id, job.fence)

    def report(i):
        order = ids[:]
        random.Random(i).shuffle(order)
        return [(rid, replicas[i % 2].add_result(racing_result(rid, devices[rid]), *leases.get(rid, ("", 0))))
                for rid in order]

    outcomes = at_once(THREADS, report)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert not errors, errors
    for rid in ids:  # stored by exactly one report, every other one an acknowledged duplicate
        assert sorted(dup for per_thread in outcomes for r, dup in per_thread if r == rid) == \
            [False] + [True] * (THREADS - 1)
    assert replicas[1].result_count() == len(ids)
    assert {d.inventory.device_id: d.results for d in replicas[1].devices()} == {"dev-0": 4, "dev-1": 4, "dev-2": 4}
    if with_jobs:
        states = replicas[1].jobs([job for job, _ in leases.values()])
        assert sorted((s.job_state, s.result_id) for s in states) == sorted((pb.JOB_STATE_DONE, r) for r in ids)


def quality(result_id: str, kld: float = 0.01) -> pb.QualityResult:
    return pb.QualityResult(result_id=result_id, device_id="dev-0", model_name="smollm2-135m", quant="Q4_0",
                            kl_divergence_mean=kld, perplexity=12.0, n_positions=256, context_tokens=512)


def test_the_same_quality_results_through_two_replicas_at_once_are_stored_once(replicas):
    ids = [f"q-{n}" for n in range(12)]
    outcomes = at_once(THREADS, lambda i: [(rid, replicas[i % 2].add_quality(quality(rid)))
                                           for rid in random.Random(i).sample(ids, len(ids))])
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    for rid in ids:
        assert sorted(dup for per_thread in outcomes for r, dup in per_thread if r == rid) == \
            [False] + [True] * (THREADS - 1)
    assert sorted(q.result_id for q in replicas[1].quality_results()) == sorted(ids)
    with pytest.raises(ConflictingResult):
        replicas[0].add_quality(quality(ids[0], kld=0.5))


def test_different_payloads_under_one_id_at_once_store_one_and_refuse_the_others(replicas):
    ids = [f"c-{n}" for n in range(8)]
    outcomes = at_once(THREADS, lambda i: [replicas[i % 2].add_results([(racing_result(rid, "dev-0", 10.0 + i % 4),
                                                                          "", 0)])[0] for rid in ids])
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    stored = {r.result_id: r.decode_tokens_per_s.mean for r in replicas[1].results()}
    assert sorted(stored) == ids
    for n, rid in enumerate(ids):
        got = [(10.0 + i % 4, per_thread[n]) for i, per_thread in enumerate(outcomes)]
        assert [d for d, o in got if o is False] == [stored[rid]]
        for decode, outcome in got:  # the others: the same payload as stored a duplicate, another a conflict
            if outcome is not False:
                assert outcome is True if decode == stored[rid] else isinstance(outcome, ConflictingResult), got


NUL_EDITS = {
    "model_name": lambda r: setattr(r, "model_name", "smollm2\x00-135m"),
    "quant": lambda r: setattr(r, "quant", "Q4_0\x00"),
    "backend": lambda r: setattr(r.request, "backend", "\x00llama.cpp"),
    "error": lambda r: setattr(r, "error", "killed\x00"),
    "result_id": lambda r: setattr(r, "result_id", r.result_id + "\x00"),
}


def test_a_result_the_database_refuses_never_fails_the_rest_of_its_batch(db_url):
    """Text the database cannot hold (NUL on PostgreSQL: ingest refuses it first, the store is the last line)."""
    with Store(db_url) as store:
        store.upsert_device(pb.DeviceInventory(device_id="dev-1", hostname="box"))
        honest = [racing_result(f"ok-{n}", "dev-1") for n in range(20)]
        bad = []
        for name, edit in NUL_EDITS.items():
            r = racing_result(f"bad-{name}", "dev-1")
            edit(r)
            bad.append(r)
        batch = honest[:10] + bad + honest[10:]
        random.Random(1).shuffle(batch)
        leases = {}
        for r in batch[::2] + bad:  # with a job or without (a failed job's error is stored as text beside it)
            store.enqueue("dev-1", pb.ProfileRequest(quant="Q4_0"))
            job = store.claim_job("dev-1")
            leases[r.result_id] = (job.job_id, job.fence)
        outcomes = store.add_results([(r, *leases.get(r.result_id, ("", 0))) for r in batch])
        by_id = {r.result_id: o for r, o in zip(batch, outcomes)}
        assert all(by_id[r.result_id] is False for r in honest), by_id
        stored = {r.result_id for r in store.results()}
        assert {r.result_id for r in honest} <= stored
        for r in bad:  # SQLite holds NUL; PostgreSQL refuses it, for that result alone
            assert (r.result_id in stored) == (by_id[r.result_id] is False)
            if store.db.postgres:
                assert isinstance(by_id[r.result_id], Exception)
        assert store.devices()[0].results == len(stored)


NUL_STRINGS = {
    **NUL_EDITS,
    "backend_build": lambda r: setattr(r, "backend_build", "b1234\x00"),
    "power.declined": lambda r: r.power.declined.append("nvml\x00"),
    "power.phases[0].phase": lambda r: setattr(r.power.phases[0], "phase", "de\x00code"),
}


@pytest.mark.parametrize("field", sorted(NUL_STRINGS))
def test_check_result_refuses_a_nul_in_any_string(field):
    r = good_result("dev-1")
    NUL_STRINGS[field](r)
    with pytest.raises(ingest.Refused, match=r"NUL") as refused:
        ingest.check_result(r)
    assert "\x00" not in str(refused.value)


def test_nul_reports_are_refused_alone_while_honest_ones_from_many_devices_are_stored(db_url, tmp_path):
    """Many devices report at once through one coordinator, some of them with NUL text: each honest report is
    stored, each NUL one refused with INVALID_ARGUMENT, whatever batch it shared."""
    server = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
    server.start()
    agents = Agents(server)
    try:
        devices = [f"dev-{n}" for n in range(8)]
        for d in devices:
            agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=d, hostname="box")))
        edits = list(NUL_STRINGS.values())

        def report(i):
            r = good_result(devices[i % len(devices)])
            if i % 5 == 0:
                edits[i // 5 % len(edits)](r)
            try:
                return agents.ReportResult(pb.ReportResultRequest(result=r)).duplicate
            except grpc.RpcError as exc:
                return exc.code()

        outcomes = at_once(THREADS, lambda i: [report(i + THREADS * k) for k in range(10)])
        flat = [o for per_thread in outcomes for o in per_thread]
        refused = sum(1 for j in range(THREADS * 10) if j % 5 == 0)
        assert flat.count(grpc.StatusCode.INVALID_ARGUMENT) == refused
        assert flat.count(False) == len(flat) - refused
        assert server.store.result_count() == len(flat) - refused
    finally:
        agents.close()
        server.stop()


def _text_paths(descriptor, prefix: tuple = (), depth: int = 0):
    """The path (field names) of every text field of a request, nested messages to depth 3 and maps included."""
    for field in descriptor.fields:
        path = (*prefix, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["key"].type == field.TYPE_STRING:
                yield path
        elif field.type == field.TYPE_MESSAGE and depth < 3:
            yield from _text_paths(field.message_type, path, depth + 1)
        elif field.type == field.TYPE_STRING:
            yield path


def _with_nul(request, path: tuple) -> None:
    holder = request
    for name in path[:-1]:
        field = holder.DESCRIPTOR.fields_by_name[name]
        holder = getattr(holder, name).add() if field.is_repeated else getattr(holder, name)
    field, text = holder.DESCRIPTOR.fields_by_name[path[-1]], "dev-1\x00x"
    if field.message_type is not None:  # a map: the NUL in a key
        value = field.message_type.fields_by_name["value"]
        entry = getattr(holder, path[-1])
        if value.type == value.TYPE_STRING:
            entry[text] = "v"
        else:
            entry[text].SetInParent()
    elif field.is_repeated:
        getattr(holder, path[-1]).append(text)
    else:
        setattr(holder, path[-1], text)


def test_a_nul_in_any_text_of_any_rpc_is_invalid_argument_on_both_databases(db_url, tmp_path):
    """Every RPC, with a NUL in each of its requests' text fields (a lookup key as much as text to store: a job id
    in a heartbeat or a report, a campaign id, a device to revoke, a page token, a table option): INVALID_ARGUMENT,
    naming the field, on SQLite as on PostgreSQL (whose text cannot hold NUL: psycopg refused such a lookup, and the
    call answered INTERNAL) — and the coordinator serves the next call as before."""
    from fleetfit.coordinator.service.auth import POLICY
    from tests.conftest import fleet_stub

    server = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
    server.start()
    agents = Agents(server)
    try:
        agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-1", hostname="box")))
        stubs = {"AgentService": agents.stub("dev-1"), "FleetService": fleet_stub(server)}
        answered, tried = {}, 0
        for service in pb.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                device_field = POLICY.get(method.full_name, (None, None))[1]
                for path in _text_paths(method.input_type):
                    request = getattr(pb, method.input_type.name)()
                    if device_field:  # the caller's own id, unless the NUL goes there
                        holder = request
                        for name in device_field.split(".")[:-1]:
                            holder = getattr(holder, name)
                        setattr(holder, device_field.split(".")[-1], "dev-1")
                    _with_nul(request, path)
                    call = getattr(stubs[service.name], method.name)
                    try:
                        reply = call(request, timeout=10)
                        if method.server_streaming:
                            list(reply)
                        answered[f"{method.name}:{'.'.join(path)}"] = "OK"
                    except grpc.RpcError as exc:
                        shown = f"{method.name}:{'.'.join(path)}"
                        answered[shown] = exc.code().name if path[-1] in exc.details() else exc.details()
                    tried += 1
        assert tried > 60
        assert {k: v for k, v in answered.items() if v != "INVALID_ARGUMENT"} == {}
        agents.Heartbeat(pb.HeartbeatRequest(device_id="dev-1"), timeout=10)
        stubs["FleetService"].ListDevices(pb.ListDevicesRequest(), timeout=10)
    finally:
        agents.close()
        server.stop()


def test_one_join_token_enrolls_one_device_through_two_replicas_under_concurrent_join_rpcs(db_url, tmp_path):
    """16 devices join at once with one token, through two coordinators on one database (the Join RPC, as agents
    make it): one is enrolled; each other one hears a refusal that asking again cannot change (the token is spent:
    UNAUTHENTICATED), never a transient failure it would retry, on SQLite as on PostgreSQL."""
    from fleetfit.agent import identity

    servers = [BackgroundCoordinator(db_url, state_dir=tmp_path / f"state-{n}") for n in range(2)]
    for server in servers:
        server.start()
    try:
        token = servers[0].join_token()
        outcomes = at_once(THREADS, lambda i: identity.join(servers[i % 2].address, token, f"dev-{i}", insecure=True))
        joined = [o for o in outcomes if isinstance(o, identity.Identity)]
        refused = [o for o in outcomes if not isinstance(o, identity.Identity)]
        assert len(joined) == 1, outcomes
        assert all(type(o) is identity.JoinError and "already used" in str(o) for o in refused), refused
        assert enrolled(servers[1].store) == [joined[0].device_id]
    finally:
        for server in servers:
            server.stop()
