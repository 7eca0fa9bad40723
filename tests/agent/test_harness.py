"""The measurement protocol, checked once for every backend: each backend's worker side measures through the
harness (agent/backends/harness.py), and the harness drives any runner through llama-bench's protocol: warm-up,
depth, repetitions, phase windows, one TTFT definition, the same token draws, the sweep, unsupported points."""

import json

import pytest

from fleetfit.agent.backends import harness, registry
from fleetfit.agent.backends.base import Backend, Measured


class Streams(harness.Streams):
    def __init__(self, runner, n):
        self.runner, self.n, self.closed = runner, n, False

    def warm_up(self, tokens, step):
        self.runner.log.append(("serving-warmup", len(tokens), len(step)))

    def clear(self):
        self.runner.log.append(("serving-clear",))

    def prefill(self, prompts, ready):
        self.runner.log.append(("serving-prefill", tuple(map(tuple, prompts))))
        ready([0])  # the first stream's logits come first (chunked), the others' with the last chunk
        ready(list(range(1, self.n)))

    def choose(self, seqs):
        self.runner.log.append(("serving-choose", tuple(seqs)))

    def decode(self, step):
        tokens, pos = step
        self.runner.log.append(("serving-step", tuple(tokens), pos))

    def close(self):
        self.closed = True


class Recorder(harness.Runner):
    """A runner that records what the harness asks of it; its cache is a list of tokens."""

    def __init__(self, n_vocab=97, bos=None, refuse=None, fail_at=None):
        self.n_vocab, self.bos, self.refuse, self.fail_at = n_vocab, bos, refuse or {}, fail_at
        self.log, self.cache, self.closed, self.opened = [], [], False, []

    def load(self):
        self.log.append(("load",))

    def clear(self, keep=0):
        self.log.append(("clear", keep))
        self.cache = self.cache[:keep]

    def prefill(self, tokens):
        self.log.append(("prefill", len(tokens)))
        self.cache += tokens
        if self.fail_at == "prefill":
            raise RuntimeError("device lost")

    def first_token(self):
        self.log.append(("choose",))
        return 0

    def decode(self, token):
        self.log.append(("decode", token))
        self.cache.append(token)

    def streams(self, n, n_prompt, n_gen):
        if n in self.refuse:
            if self.refuse[n] == "raise":
                raise MemoryError("no room")
            return self.refuse[n]
        self.opened.append(Streams(self, n))
        return self.opened[-1]

    def unsupported(self, exc, n, n_prompt, n_gen):
        return f"out of memory for {n}" if isinstance(exc, MemoryError) else None

    def failure(self, exc):
        return MemoryError(f"does not fit: {exc}") if "device lost" in str(exc) else None

    def describe(self):
        return {"n_batch": 8, "n_ubatch": 8, "n_ctx": 64, "backend_version": "0", "backend_build": "recorder",
                "compute_device": "cpu"}

    def close(self):
        self.closed = True


def tokens_fed(log):
    return [entry for entry in log if entry[0] in ("prefill", "decode", "serving-prefill", "serving-step")]


def test_every_backend_measures_through_the_one_harness():
    for backend in registry.all_backends():
        assert type(backend).run is Backend.run, f"{backend.NAME} times runs itself"
        assert type(backend).runner is not Backend.runner, f"{backend.NAME} supplies no runner"


def test_warm_up_depth_and_repetitions_in_llama_bench_order():
    runner = Recorder(bos=1)
    measured = harness.measure(runner, harness.Plan(n_prompt=6, n_gen=3, repetitions=2, threads=2, n_depth=4))
    fed = [e for e in runner.log if e[0] != "decode"]
    decodes = [e for e in runner.log if e[0] == "decode"]
    assert fed == [("load",), ("prefill", 6), ("choose",), ("clear", 0), ("clear", 0),  # warm-up: a prefill, a token
                   ("prefill", 4), ("choose",),  # the depth, untimed
                   ("clear", 4), ("prefill", 6), ("choose",), ("clear", 4),
                   ("clear", 4), ("prefill", 6), ("choose",), ("clear", 4)]
    assert len(decodes) == 1 + 2 * 3 and decodes[0] == ("decode", 1)  # each decode starts from BOS
    assert [phase for phase, _, _ in measured.phase_windows_ns] == [
        "load", "warmup", "warmup", "warmup", "prefill", "decode", "prefill", "decode"]
    assert all(start <= end for _, start, end in measured.phase_windows_ns)
    run = measured.run  # the wire record's run part, as the agent merges it into its result
    assert len(run.prefill_tokens_per_s.samples) == len(run.decode_tokens_per_s.samples) == 2
    assert run.threads == 2 and run.backend_build == "recorder" and runner.closed
    assert not run.HasField("gpu_memory") and not run.serving and measured.decode_shape is None
    assert Measured.from_json(json.loads(json.dumps(measured.to_json()))) == measured  # what the worker writes


def test_ttft_is_the_prefill_and_the_choice_of_the_first_token():
    run = harness.measure(Recorder(), harness.Plan(n_prompt=5, n_gen=2, repetitions=3, threads=1)).run
    for tps, ttft_ms in zip(run.prefill_tokens_per_s.samples, run.ttft_ms.samples):
        assert ttft_ms >= 1000 * 5 / tps  # the prefill's seconds are part of the TTFT, never more than it


def test_backends_of_one_vocabulary_are_fed_the_same_tokens():
    plan = harness.Plan(n_prompt=7, n_gen=4, repetitions=2, threads=1, parallel=(2,))
    one, other = Recorder(n_vocab=50), Recorder(n_vocab=50)
    harness.measure(one, plan)
    harness.measure(other, plan)
    assert tokens_fed(one.log) == tokens_fed(other.log)
    again = Recorder(n_vocab=50)
    harness.measure(again, harness.Plan(7, 4, 2, 1, parallel=(2,), seed=99))
    assert tokens_fed(again.log) != tokens_fed(one.log)  # the draws are the seed's, not fixed tokens
    assert all(0 <= t < 50 for e in tokens_fed(one.log) if e[0] == "decode" for t in e[1:])


def test_the_sweep_measures_each_point_and_says_why_one_cannot_run():
    runner = Recorder(refuse={3: "llama.cpp could not create a context for 3 sequences", 4: "raise"})
    measured = harness.measure(runner, harness.Plan(n_prompt=4, n_gen=2, repetitions=2, threads=1,
                                                    parallel=(2, 3, 4)))
    two, three, four = measured.run.serving
    assert two.parallel == 2 and not two.unsupported_reason
    assert len(two.aggregate_decode_tokens_per_s.samples) == 2 and len(two.ttft_ms_p99.samples) == 2
    assert three.unsupported_reason.startswith("llama.cpp could not")
    assert not three.HasField("aggregate_decode_tokens_per_s")  # unsupported, not 0
    assert four.unsupported_reason == "out of memory for 4"
    steps = [e for e in runner.log if e[0] == "serving-step"]
    assert [pos for _, _, pos in steps] == [4, 5, 4, 5] and all(len(tokens) == 2 for _, tokens, _ in steps)
    assert [e[1] for e in runner.log if e[0] == "serving-choose"] == [(0,), (1,)] * 2  # each stream's own choice
    assert [p for p, _, _ in measured.phase_windows_ns].count("serving_decode:2") == 2
    assert all(s.closed for s in runner.opened)
    assert "serving points" in measured.run.memory_method


def test_a_failed_run_is_reported_as_the_runner_says_and_closes_it():
    runner = Recorder(fail_at="prefill")
    with pytest.raises(MemoryError, match="does not fit: device lost"):
        harness.measure(runner, harness.Plan(n_prompt=4, n_gen=2, repetitions=1, threads=1))
    assert runner.closed
