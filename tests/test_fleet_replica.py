"""The fleet's replicated data type: any order of arrival, with duplicates, gives the same
projection; a tombstone wins over its add; the newest name wins, ties broken by device."""

from hypothesis import given, settings, strategies as st

from edge_classifier.comms.fleet.replica import Replica, parse_register, sample_key

SIDS = [f"{i:016x}abcd" for i in range(1, 7)]
CIDS = [f"{i:016x}" for i in range(1, 4)]
NAMES = ["apple", "Apple", "pear", None]


def op_strategy():
    return st.one_of(
        st.tuples(st.just("reg"), st.sampled_from(CIDS), st.integers(1, 9),
                  st.sampled_from(["a", "b", "c"]), st.sampled_from(NAMES)),
        st.tuples(st.just("add"), st.sampled_from(SIDS), st.sampled_from(CIDS),
                  st.sampled_from(["a", "b"])),
        st.tuples(st.just("del"), st.sampled_from(SIDS), st.sampled_from(CIDS)))


def apply(replica, op):
    if op[0] == "reg":
        replica.merge_register(op[1], (op[2], op[3], op[4]))
    elif op[0] == "add":
        replica.merge_sample(sample_key(op[1], op[2]), op[3], 5)
    else:
        replica.merge_tombs([sample_key(op[1], op[2])])


def projected(replica):
    return {k: (g.name, sorted(g.cids), sorted(g.sids)) for k, g in replica.projection().items()}


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op_strategy(), max_size=25), data=st.data())
def test_any_order_and_duplicates_give_the_same_projection(ops, data):
    one = Replica("x")
    for op in ops:
        apply(one, op)
    shuffled = data.draw(st.permutations(ops + data.draw(st.lists(st.sampled_from(ops) if ops
                                                                  else st.nothing()))))
    two = Replica("y")
    for op in shuffled:
        apply(two, op)
    assert projected(one) == projected(two)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(op_strategy(), max_size=25), split=st.integers(0, 25))
def test_merging_whole_states_is_the_same_as_merging_the_operations(ops, split):
    a, b, both = Replica("a"), Replica("b"), Replica("c")
    for op in ops[:split]:
        apply(a, op)
    for op in ops[split:]:
        apply(b, op)
    for op in ops:
        apply(both, op)
    a.load_json(b.to_json())
    assert projected(a) == projected(both)


def test_a_removed_sample_never_comes_back():
    r = Replica("a")
    r.merge_register(CIDS[0], (1, "a", "apple"))
    key = sample_key(SIDS[0], CIDS[0])
    r.merge_tombs([key])
    r.merge_sample(key, "b", 2)  # the add arrives after the delete
    assert r.projection()["apple"].sids == set()


def test_the_newest_name_wins_and_equal_stamps_go_to_the_larger_device():
    r = Replica("a")
    r.merge_register(CIDS[0], (5, "b", "pear"))
    r.merge_register(CIDS[0], (5, "a", "plum"))
    r.merge_register(CIDS[0], (4, "z", "fig"))
    assert list(r.projection()) == ["pear"]


def test_classes_renamed_to_one_name_project_to_one_class_named_by_the_newest_write():
    r = Replica("a")
    r.merge_register(CIDS[0], (1, "a", "apple"))
    r.merge_register(CIDS[1], (2, "b", "APPLE"))
    r.merge_sample(sample_key(SIDS[0], CIDS[0]), "a", 1)
    r.merge_sample(sample_key(SIDS[1], CIDS[1]), "b", 1)
    (group,) = r.projection().values()
    assert group.name == "APPLE" and group.sids == {SIDS[0], SIDS[1]}


def test_a_clear_removes_only_what_it_observed():
    r = Replica("a")
    cid = r.new_class("apple")
    r.add_sample(SIDS[0], cid)
    for key in r.live_keys([cid]):
        r.remove(key)
    r.merge_sample(sample_key(SIDS[1], cid), "b", 1)  # taught concurrently elsewhere
    assert r.projection()["apple"].sids == {SIDS[1]}


def test_received_registers_are_checked_like_local_class_names():
    assert parse_register([1, "a", "ok"]) == (1, "a", "ok")
    assert parse_register([1, "a", "../etc"]) is None
    assert parse_register([1, "a", "unknown"]) is None
    assert parse_register([True, "a", "x"]) is None
    assert parse_register([1, "", "x"]) is None
    assert parse_register([1, "a", "x" * 1000]) is None
