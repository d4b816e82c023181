"""User-supplied client files and federation builders: round trips, clear errors, speed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedlora.data import (
    SYSTEM_KIND,
    ClientDataError,
    Example,
    build_synthetic_federation,
    federation_from_dir,
    generate_user_examples,
    load_client_dir,
    load_client_examples,
    make_population,
    write_client_dir,
)


def _clients() -> dict[str, list[Example]]:
    users = make_population(3, seed=2)
    out = {u.user_id: generate_user_examples(u, 12, seed=1) for u in users}
    # awkward text: unicode, quotes, a line separator that str.splitlines() would break on
    out["user_00001"].append(Example('emoji 🎉 "quoted"\u2028still one', "food", "note", "x"))
    return out


def test_round_trip(tmp_path: Path) -> None:
    clients = _clients()
    written = write_client_dir(tmp_path, clients)
    assert [p.name for p in written] == [f"{cid}.jsonl" for cid in sorted(clients)]
    loaded = load_client_examples(tmp_path)
    assert list(loaded) == sorted(clients)
    for cid, examples in clients.items():
        assert [(e.text, e.topic, e.kind) for e in loaded[cid]] == [
            (e.text, e.topic, e.kind) for e in examples
        ]
        assert all(e.user_id == cid for e in loaded[cid])
    texts = load_client_dir(tmp_path)
    assert texts == {cid: [e.text for e in ex] for cid, ex in sorted(clients.items())}


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    clients = _clients()
    write_client_dir(tmp_path, clients)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_client_dir(tmp_path, clients)
    write_client_dir(tmp_path, {"user_00000": clients["user_00001"]}, overwrite=True)
    assert load_client_dir(tmp_path)["user_00000"] == [e.text for e in clients["user_00001"]]


@pytest.mark.parametrize("bad_id", ["", ".hidden", "a/b", "x y", "../up", "c.jsonl"])
def test_write_rejects_unsafe_client_ids(tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(ValueError, match="invalid client id"):
        write_client_dir(tmp_path, {bad_id: [Example("hello there", "work", "note", "u")]})


def test_txt_and_jsonl_mixed(tmp_path: Path) -> None:
    (tmp_path / "bob.txt").write_text("first line\n\n  second line  \r\nthird\n", encoding="utf-8")
    (tmp_path / "alice.jsonl").write_text(
        '{"text": "hi", "topic": "work"}\n\n{"text": "yo", "kind": "note"}\n', encoding="utf-8"
    )
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files are ignored
    loaded = load_client_examples(tmp_path)
    assert list(loaded) == ["alice", "bob"]
    assert [e.text for e in loaded["bob"]] == ["first line", "second line", "third"]
    assert [(e.topic, e.kind) for e in loaded["alice"]] == [
        ("work", "message"),
        ("unknown", "note"),
    ]


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ('{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n', 3, "malformed JSON"),
        ('{"text": "ok"}\n\n{"topic": "work"}\n', 3, 'missing required field "text"'),
        ('["a list"]\n', 1, "expected a JSON object"),
        ('{"text": 5}\n', 1, '"text" must be a non-empty string'),
        ('{"text": "   "}\n', 1, '"text" must be a non-empty string'),
        ('{"text": "ok", "topic": 3}\n', 1, '"topic" must be a string'),
    ],
)
def test_malformed_jsonl_names_file_and_line(
    tmp_path: Path, content: str, line: int, reason: str
) -> None:
    (tmp_path / "good.txt").write_text("fine\n", encoding="utf-8")
    bad = tmp_path / "carol.jsonl"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(ClientDataError) as info:
        load_client_dir(tmp_path)
    err = info.value
    assert err.path == bad and err.line == line
    assert f"carol.jsonl:{line}:" in str(err) and reason in str(err)
    assert isinstance(err, ValueError)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_text("x", encoding="utf-8")
    with pytest.raises(ClientDataError, match="empty directory"):
        load_client_dir(tmp_path)


@pytest.mark.parametrize("name", ["data.csv", "notes.json", "README"])
def test_unsupported_file(tmp_path: Path, name: str) -> None:
    (tmp_path / "ok.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / name).write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ClientDataError, match=rf"{re.escape(name)}: unsupported entry"):
        load_client_dir(tmp_path)


def test_other_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_client_dir(tmp_path / "missing")
    (tmp_path / "f.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(NotADirectoryError):
        load_client_dir(tmp_path / "f.txt")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ClientDataError, match="sub: unsupported entry"):
        load_client_dir(tmp_path)


def test_duplicate_empty_and_undecodable_clients(tmp_path: Path) -> None:
    (tmp_path / "dan.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
    (tmp_path / "dan.txt").write_text("b\n", encoding="utf-8")
    with pytest.raises(ClientDataError, match=r"dan\.txt: client 'dan' already has data"):
        load_client_dir(tmp_path)
    (tmp_path / "dan.txt").unlink()
    (tmp_path / "eve.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ClientDataError, match=r"eve\.txt: contains no examples"):
        load_client_dir(tmp_path)
    (tmp_path / "eve.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ClientDataError, match=r"eve\.txt: not valid UTF-8"):
        load_client_dir(tmp_path)


def test_federation_from_dir(tmp_path: Path) -> None:
    write_client_dir(tmp_path, _clients())
    fed = federation_from_dir(tmp_path, heldout_fraction=0.25, seed=0)
    assert fed.client_ids == sorted(_clients())
    for cid, texts in load_client_dir(tmp_path).items():
        c = fed[cid]
        assert sorted(c.train + c.heldout) == sorted(texts)
        assert len(c.heldout) == round(len(texts) * 0.25)
    assert len(fed.generic_heldout) > 0
    assert fed == federation_from_dir(tmp_path, heldout_fraction=0.25, seed=0)


@pytest.mark.parametrize("partition", ["natural", "iid", "dirichlet"])
def test_synthetic_federation(partition: str) -> None:
    fed = build_synthetic_federation(20, 30, seed=5, partition=partition)  # type: ignore[arg-type]
    assert fed.num_clients == 20 == len(fed)
    assert fed.client_ids == sorted(fed.client_ids)
    assert sum(len(c.train) + len(c.heldout) for c in fed.clients.values()) == 600
    for c in fed.clients.values():
        assert c.train  # every client can train
        assert all(isinstance(t, str) and t for t in c.train + c.heldout)
    if partition != "dirichlet":
        assert all(len(c.heldout) == 6 for c in fed.clients.values())
    assert fed == build_synthetic_federation(20, 30, seed=5, partition=partition)  # type: ignore[arg-type]


def test_natural_federation_clients_are_users_and_noise_only_in_train() -> None:
    fed = build_synthetic_federation(8, 50, seed=3, noise_rate=0.2)
    users = make_population(8, seed=3)
    assert fed.client_ids == [u.user_id for u in users]
    clean = {
        u.user_id: {e.text for e in generate_user_examples(u, 50, 3, noise_rate=0.0)} for u in users
    }
    noisy_train = 0
    for cid, c in fed.clients.items():
        assert set(c.heldout) <= clean[cid]  # held-out is always genuine user text
        noisy_train += sum(t not in clean[cid] for t in c.train)
    assert noisy_train > 0.05 * 8 * 40  # automated messages landed in train
    quiet = build_synthetic_federation(8, 50, seed=3, noise_rate=0.0)
    for cid, c in quiet.clients.items():
        assert set(c.train) <= clean[cid]


def test_generic_heldout_is_separate_from_pretraining_stream() -> None:
    from fedlora.data import generate_generic_corpus, generic_heldout

    held = generic_heldout(seed=0)
    assert held == build_synthetic_federation(2, 5, seed=0).generic_heldout
    assert list(held) != generate_generic_corpus(len(held), seed=0)


def test_dirichlet_over_synthetic_users_is_more_skewed_than_iid() -> None:
    """Topic skew of re-partitioned synthetic users (the pool a Dirichlet federation uses)."""
    from fedlora.data import partition_dirichlet, partition_iid, topic_skew

    users = make_population(30, seed=1, topic_concentration=100.0)
    pool = [e for u in users for e in generate_user_examples(u, 40, 1, 0.0)]
    assert topic_skew(partition_dirichlet(pool, 30, 0.1, seed=0)) > 2 * topic_skew(
        partition_iid(pool, 30, seed=0)
    )


def test_builder_errors() -> None:
    with pytest.raises(ValueError, match="num_clients"):
        build_synthetic_federation(0, 10, seed=0)
    with pytest.raises(ValueError, match="examples_per_client"):
        build_synthetic_federation(3, 0, seed=0)
    with pytest.raises(ValueError, match="partition must be"):
        build_synthetic_federation(3, 10, seed=0, partition="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heldout_fraction"):
        build_synthetic_federation(3, 10, seed=0, heldout_fraction=1.0)
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        build_synthetic_federation(3, 10, seed=0, partition="dirichlet", dirichlet_alpha=0.0)


def test_jsonl_written_fields(tmp_path: Path) -> None:
    write_client_dir(tmp_path, {"a": [Example("hello world", "work", SYSTEM_KIND, "z")]})
    record = json.loads((tmp_path / "a.jsonl").read_text(encoding="utf-8"))
    assert record == {"text": "hello world", "topic": "work", "kind": SYSTEM_KIND}
