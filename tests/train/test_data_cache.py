"""train.data.cache: load-or-make of derived training data."""
import torch

from morphable.train.data.cache import cache_root, cached, settings_key


def test_made_once_then_loaded_and_a_corrupt_file_is_made_again(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return {"x": torch.arange(5.0)}

    path = tmp_path / "sub" / "f.pt"
    assert torch.equal(cached(path, make)["x"], torch.arange(5.0)) and len(calls) == 1
    assert torch.equal(cached(path, make)["x"], torch.arange(5.0)) and len(calls) == 1   # from disk
    path.write_bytes(b"not a torch file")
    assert torch.equal(cached(path, make)["x"], torch.arange(5.0)) and len(calls) == 2
    assert [p.name for p in path.parent.iterdir()] == ["f.pt"]                          # no temporary left


def test_keys_follow_the_settings_not_their_order(tmp_path):
    assert settings_key({"a": 1, "b": [2, 3]}) == settings_key({"b": [2, 3], "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 2}) and len(settings_key({"a": 1})) == 16
    assert cache_root(str(tmp_path)) == tmp_path
    assert cache_root("").name == "train-cache"
