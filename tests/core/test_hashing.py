"""Content hashes of configs: the same content gives the same hash, whatever the key order."""

from vibbench.core.hashing import stable_hash


def test_key_order_does_not_matter_and_any_change_does():
    a = stable_hash({"train": {"epochs": 10, "lr": 1e-4}, "seed": 0})
    assert a == stable_hash({"seed": 0, "train": {"lr": 1e-4, "epochs": 10}})
    assert a != stable_hash({"train": {"epochs": 11, "lr": 1e-4}, "seed": 0})
    assert len(a) == 64 and set(a) <= set("0123456789abcdef")
