"""`capfan keys`: key pair files in ZeroMQ certificate format and their loaders."""
import os
import stat

import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from capfan import keys
from capfan.cli import main


def test_gen_writes_a_pair_prints_the_public_key_and_show_reads_it(tmp_path):
    r = CliRunner().invoke(main, ["keys", "gen", "agent1", "--dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    pub = r.stdout.splitlines()[0]
    assert stat.S_IMODE(os.stat(tmp_path / "agent1.key_secret").st_mode) == 0o600
    assert "secret-key" not in (tmp_path / "agent1.key").read_text()
    pair = keys.load_keypair(tmp_path / "agent1.key_secret")
    assert pair["public"] == pub == keys.load_public(tmp_path / "agent1.key")
    assert zmq.curve_public(pair["secret"].encode()).decode() == pub
    # readable by pyzmq's own loader too (the collector's ZAP authenticator uses it)
    assert zmq.auth.load_certificate(str(tmp_path / "agent1.key_secret")) == (pub.encode(), pair["secret"].encode())
    r = CliRunner().invoke(main, ["keys", "show", str(tmp_path / "agent1.key")])
    assert r.exit_code == 0 and r.stdout.strip() == pub


def test_gen_refuses_to_overwrite(tmp_path):
    keys.generate("a", str(tmp_path))
    before = {n: (tmp_path / n).read_text() for n in os.listdir(tmp_path)}
    r = CliRunner().invoke(main, ["keys", "gen", "a", "--dir", str(tmp_path)])
    assert r.exit_code == 2 and "already exists" in r.output and "Traceback" not in r.output
    assert {n: (tmp_path / n).read_text() for n in os.listdir(tmp_path)} == before
    (tmp_path / "b.key_secret").write_text("x")  # half a pair in the way: nothing written
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.generate("b", str(tmp_path))
    assert not (tmp_path / "b.key").exists()
    with pytest.raises(keys.KeyFileError, match="key name"):
        keys.generate("../evil", str(tmp_path))


def test_two_generated_pairs_differ(tmp_path):
    keys.generate("a", str(tmp_path))
    keys.generate("b", str(tmp_path))
    assert keys.load_public(tmp_path / "a.key") != keys.load_public(tmp_path / "b.key")


def test_load_public_keys_from_directory_and_files(tmp_path):
    d = tmp_path / "allowed"
    keys.generate("a", str(d))
    keys.generate("b", str(d))
    pubs = {keys.load_public(d / "a.key"), keys.load_public(d / "b.key")}
    assert keys.load_public_keys(str(d)) == pubs  # *.key only, secrets not needed
    assert keys.load_public_keys([d / "a.key"]) == {keys.load_public(d / "a.key")}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(keys.KeyFileError, match="no \\*.key files"):
        keys.load_public_keys(str(empty))


@pytest.mark.parametrize("text, match", [
    ("garbage\n", "no curve public-key"),
    ("curve\n    public-key = \"tooshort\"\n", "not a CURVE key"),
    ("curve\n    public-key = \"" + "\"" * 40 + "\n", "malformed line|not a CURVE key"),
    ("curve\n    public-key\n", "malformed line"),
])
def test_malformed_files_give_clear_errors(tmp_path, text, match):
    p = tmp_path / "x.key"
    p.write_text(text)
    with pytest.raises(keys.KeyFileError, match=match):
        keys.load_public(p)


def test_keypair_errors(tmp_path):
    with pytest.raises(keys.KeyFileError, match="does not exist.*keys gen"):
        keys.load_keypair(tmp_path / "none.key_secret")
    keys.generate("a", str(tmp_path))
    keys.generate("b", str(tmp_path))
    with pytest.raises(keys.KeyFileError, match="no secret-key.*a.key_secret"):
        keys.load_keypair(tmp_path / "a.key")
    a, b = (tmp_path / "a.key_secret").read_text(), keys.load_keypair(tmp_path / "b.key_secret")
    secret_a = keys.load_keypair(tmp_path / "a.key_secret")["secret"]
    (tmp_path / "a.key_secret").write_text(a.replace(secret_a, b["secret"]))
    with pytest.raises(keys.KeyFileError, match="does not belong"):
        keys.load_keypair(tmp_path / "a.key_secret")
    r = CliRunner().invoke(main, ["keys", "show", str(tmp_path / "missing.key")])
    assert r.exit_code == 2 and "does not exist" in r.output
