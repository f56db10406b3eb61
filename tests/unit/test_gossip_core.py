"""mosix_core.cluster.gossip: the payload codec, the cluster view and target choice."""

from __future__ import annotations

import random
from ipaddress import IPv4Address as IP

import pytest

from mosix_core.cluster.gossip import (
    ENTRY_SIZE,
    ClusterView,
    NodeEntry,
    NodeStatus,
    choose_targets,
    decode_entries,
    encode_entries,
    window_for,
)
from mosix_core.errors import ProtocolError

ME = IP("10.0.0.1")


def ip(k: int) -> IP:
    return IP(f"10.0.0.{k}")


def status(k: int, **kw) -> NodeStatus:
    return NodeStatus(ip(k), **kw)


def view(dead_after: float = 10.0, **kw) -> ClusterView:
    v = ClusterView(ME, dead_after=dead_after, **kw)
    v.update_local(status(1, load=50), 0.0)
    return v


# -- codec -----------------------------------------------------------------------------------------
def test_round_trip_keeps_every_field_and_millisecond_ages():
    full = NodeStatus(
        ip(7),
        load=123,
        speed=15000,
        ncpus=8,
        frozen=2,
        mem_avail_pages=1 << 20,
        mem_total_pages=1 << 22,
        swap_free_tenths=30,
        swap_total_tenths=80,
        nprocs=9,
        guests=3,
        availability=100,
        privileged_pages=4096,
        state=4 | (1 << 14),
    )
    entries = [(full, 1.2345), (status(8), 0.0), (status(9), 3600.0)]
    payload = encode_entries(entries)
    assert len(payload) == 2 + 3 * ENTRY_SIZE
    assert decode_entries(payload) == [(full, 1.234), (status(8), 0.0), (status(9), 3600.0)]


def test_round_trip_of_nothing():
    assert decode_entries(encode_entries([])) == []


def test_out_of_range_fields_are_clamped_not_wrapped():
    ((st, age),) = decode_entries(encode_entries([(status(2, load=-5, ncpus=1 << 20), -1.0)]))
    assert st.load == 0 and st.ncpus == 0xFFFF and age == 0.0


def bad_payloads() -> list[bytes]:
    payload = encode_entries([(status(2), 1.0), (status(3), 2.0)])
    return [b"", b"\x00", payload[:2], payload[:-1], payload[: 2 + ENTRY_SIZE + 3], payload + b"\x00"]


@pytest.mark.parametrize("payload", bad_payloads())
def test_truncated_or_padded_payload_is_a_protocol_error(payload):
    with pytest.raises(ProtocolError):
        decode_entries(payload)


def test_count_that_disagrees_with_the_length_is_a_protocol_error():
    payload = encode_entries([(status(2), 1.0)])
    with pytest.raises(ProtocolError):
        decode_entries(b"\x00\x02" + payload[2:])


def test_garbled_entry_with_zero_speed_is_a_protocol_error():
    payload = bytearray(encode_entries([(status(2), 1.0)]))
    payload[2 + 12 : 2 + 16] = b"\0\0\0\0"  # speed
    with pytest.raises(ProtocolError):
        decode_entries(bytes(payload))


def test_window_fills_a_datagram():
    w = window_for(8192, 72)
    assert 72 + 2 + w * ENTRY_SIZE <= 8192 < 72 + 2 + (w + 1) * ENTRY_SIZE
    assert window_for(10, 72) == 1


# -- merge -------------------------------------------------------------------------------------------
def test_merge_keeps_the_younger_information():
    v = view()
    assert v.merge([(status(2, load=10), 2.0)], now=5.0) == [ip(2)]
    v.merge([(status(2, load=20), 4.0)], now=6.0)  # older (fresh at 2.0 < 3.0): ignored
    assert v.entries[ip(2)].status.load == 10 and v.age(ip(2), 6.0) == 3.0
    v.merge([(status(2, load=30), 0.5)], now=6.0)  # younger: taken
    assert v.entries[ip(2)].status.load == 30 and v.age(ip(2), 6.0) == 0.5


def test_merge_ignores_our_own_entry_and_unaccepted_nodes():
    v = view(accept=lambda a: a != ip(3))
    assert v.merge([(status(1, load=99), 0.0), (status(3), 0.0), (status(4), 0.0)], now=1.0) == [ip(4)]
    assert v.entries[ME].status.load == 50 and ip(3) not in v.entries


def test_news_older_than_dead_after_enters_dead():
    v = view(dead_after=10.0)
    assert v.merge([(status(2), 11.0)], now=20.0) == []
    assert not v.entries[ip(2)].alive


# -- sweep -------------------------------------------------------------------------------------------
def test_sweep_marks_dead_after_dead_after_and_merge_revives():
    v = view(dead_after=10.0)
    v.merge([(status(2), 0.0), (status(3), 0.0)], now=1.0)
    assert v.sweep(11.0) == []  # exactly dead_after old: still alive
    v.merge([(status(3), 0.0)], now=5.0)
    assert v.sweep(11.5) == [ip(2)]
    assert not v.entries[ip(2)].alive and v.entries[ip(3)].alive
    assert v.sweep(12.0) == []  # reported once
    assert [e.status.ip for e in v.alive_nodes()] == [ME, ip(3)]
    assert v.merge([(status(2), 12.0)], now=30.0) == []  # fresher, but still too old
    assert not v.entries[ip(2)].alive
    assert v.merge([(status(2), 1.0)], now=30.0) == [ip(2)]  # young enough: back to life
    assert v.entries[ip(2)].alive
    assert sorted(v.sweep(1000.0)) == [ip(2), ip(3)]


def test_sweep_never_marks_ourselves_dead():
    v = view(dead_after=1.0)
    assert v.sweep(100.0) == [] and v.entries[ME].alive


def test_sweep_sees_entries_added_behind_its_back():
    v = view(dead_after=10.0)
    v.merge([(status(2), 0.0)], now=1.0)
    assert v.sweep(2.0) == []
    v.entries[ip(3)] = NodeEntry(status(3), fresh_at=-50.0)
    assert v.sweep(3.0) == [ip(3)]


def test_sweep_follows_a_changed_dead_after():
    v = view(dead_after=100.0)
    v.merge([(status(2), 0.0)], now=1.0)
    assert v.sweep(50.0) == []
    v.dead_after = 10.0
    assert v.sweep(50.0) == [ip(2)]


# -- reservations ----------------------------------------------------------------------------------
def test_a_promise_lasts_until_the_node_reports_the_new_process():
    v = view()
    v.merge([(status(2, nprocs=3), 0.0)], now=1.0)
    v.reserve(ip(2), now=5.0)
    v.reserve(ip(2), now=5.0)
    assert v.entries[ip(2)].reserved == 2
    # a fresher report that does not yet count the new processes changes nothing
    v.merge([(status(2, nprocs=3), 0.0)], now=6.0)
    assert v.entries[ip(2)].reserved == 2
    # one of the two has started there
    v.merge([(status(2, nprocs=4), 0.0)], now=7.0)
    assert v.entries[ip(2)].reserved == 1
    v.merge([(status(2, nprocs=6), 0.0)], now=8.0)  # more than promised: none left
    assert v.entries[ip(2)].reserved == 0
    v.reserve(ip(9), now=6.0)  # unknown node: nothing to count on
    assert ip(9) not in v.entries


def test_a_promise_expires_when_nothing_starts():
    v = view()
    v.reserve_hold = 5.0
    v.merge([(status(2), 0.0)], now=1.0)
    v.reserve(ip(2), now=10.0)
    v.expire_reservations(now=14.0)
    assert v.entries[ip(2)].reserved == 1
    v.expire_reservations(now=15.5)
    assert v.entries[ip(2)].reserved == 0


# -- freshest ----------------------------------------------------------------------------------------
def test_freshest_orders_by_age_ours_first_live_only_and_excludes_the_target():
    v = view(dead_after=10.0)
    v.merge([(status(2), 3.0), (status(3), 1.0), (status(4), 2.0), (status(5), 9.5)], now=10.0)
    v.update_local(status(1, load=60), 10.0)
    got = v.freshest(10, now=10.0)
    assert [(s.ip, a) for s, a in got] == [(ME, 0.0), (ip(3), 1.0), (ip(4), 2.0), (ip(2), 3.0), (ip(5), 9.5)]
    assert got[0][0].load == 60
    assert [s.ip for s, _ in v.freshest(3, now=10.0, exclude=ip(3))] == [ME, ip(4), ip(2)]
    assert [s.ip for s, _ in v.freshest(2, now=12.0, exclude=ME)] == [ip(3), ip(4)]
    v.sweep(20.0)  # all but ours too old now
    assert [s.ip for s, _ in v.freshest(5, now=20.0)] == [ME]
    assert v.freshest(0, now=20.0) == []


def test_freshest_ages_never_negative():
    v = view()
    v.merge([(status(2), 0.0)], now=5.0)
    assert all(a >= 0 for _, a in v.freshest(5, now=4.0))


def brute_freshest(v: ClusterView, count: int, now: float, exclude) -> list[float]:
    live = sorted((e.fresh_at for a, e in v.entries.items() if e.alive and a != exclude), reverse=True)
    return [max(0.0, now - f) for f in live[:count]]


def test_freshest_agrees_with_a_full_ranking_through_random_histories():
    """freshest() keeps a cache between calls; it must answer as a full ranking would."""
    rng = random.Random(5)
    for trial in range(60):
        n = rng.choice([4, 12, 40])
        accepted = {ip(k) for k in range(1, n + 2)}
        v = ClusterView(ME, accept=lambda a: a in accepted, dead_after=rng.choice([2.0, 5.0, 1e9]))
        now = 0.0
        for step in range(150):
            now += rng.choice([0.0, 0.25, 1.0])
            op = rng.random()
            if op < 0.1:
                v.update_local(status(1, load=step), now)
            elif op < 0.5:
                v.merge(
                    [
                        (status(rng.randrange(1, n + 2)), rng.choice([0.0, 1.0, rng.random() * 6]))
                        for _ in range(rng.randrange(6))
                    ],
                    now,
                )
            elif op < 0.65:
                v.sweep(now)
            elif op < 0.68:
                accepted.discard(ip(rng.randrange(2, n + 2)))
                v.forget_unaccepted()
            elif op < 0.7:
                k = rng.randrange(2, n + 2)
                if ip(k) not in v.entries:
                    v.entries[ip(k)] = NodeEntry(status(k), now - rng.random() * 4, rng.random() < 0.8)
            else:
                count = rng.randrange(0, n + 2)
                exclude = rng.choice([None, ME, ip(rng.randrange(2, n + 2))])
                got = v.freshest(count, now, exclude)
                assert [a for _, a in got] == brute_freshest(v, count, now, exclude), (trial, step)
                assert all(v.entries[s.ip].status is s and v.entries[s.ip].alive for s, _ in got)


# -- targets -------------------------------------------------------------------------------------------
def test_choose_targets_picks_distinct_random_candidates():
    candidates = [ip(k) for k in range(2, 50)]
    rng = random.Random(1)
    picks = [choose_targets(candidates, 3, rng) for _ in range(200)]
    assert all(len(set(p)) == 3 and set(p) <= set(candidates) for p in picks)
    assert len({a for p in picks for a in p}) > 40  # spread over the candidates
    assert choose_targets(candidates, 3, random.Random(7)) == choose_targets(candidates, 3, random.Random(7))


def test_choose_targets_with_few_candidates_takes_them_all():
    assert choose_targets([ip(2), ip(3)], 3, random.Random(0)) == [ip(2), ip(3)]
    assert choose_targets([], 1, random.Random(0)) == []
