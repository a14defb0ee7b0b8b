"""Users file, password verifiers, SCRAM, permissions, the login policy and ``polymq users``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from polymq.core.auth import Identity, Refusal
from polymq.core.cli import main
from polymq.core.security import CertificateCredential, SecurityManager, is_loopback
from polymq.core.security.authorizer import Authorizer
from polymq.core.security.passwords import hash_password, scram_secret, verify_password
from polymq.core.security.scram import ScramError, ScramServer
from polymq.core.security.users import (
    Permission,
    User,
    UsersFileError,
    read_users,
    write_users,
)

LOCAL = ("127.0.0.1", 40000)
REMOTE = ("192.0.2.7", 40000)


def users_cmd(path, *args: str) -> int:
    return main(["users", *args, "--set", f"security.users_file={json.dumps(str(path))}"])


# -- verifiers -------------------------------------------------------------------------------


def test_password_hash_is_salted_and_slow():
    a, b = hash_password("pw"), hash_password("pw")
    assert a != b  # salted
    scheme, iterations, _, _ = a.split("$")
    assert scheme == "pbkdf2-sha256" and int(iterations) >= 600_000
    assert verify_password("pw", a) and verify_password(b"pw", a)
    assert not verify_password("pW", a)
    assert not verify_password("pw", "md5$1$x$y")


def test_scram_sha_256_matches_rfc7677_example():
    # RFC 7677 section 3: user "user", password "pencil"
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    secret = scram_secret("SCRAM-SHA-256", "pencil", 4096, salt)
    server = ScramServer("SCRAM-SHA-256", lambda user, mech: secret if user == "user" else None)
    server_first = server.first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert server_first.startswith(b"r=rOprNGfwEbeRWgbNEkqO")
    assert server_first.endswith(b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    # the RFC's own server nonce, so its client proof applies
    server._nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    server._server_first = f"r={server._nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final = server.final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.user == "user"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_refuses_a_wrong_proof_and_an_unknown_user(mechanism):
    secret = scram_secret(mechanism, "right")
    for user in ("alice", "nobody"):
        server = ScramServer(mechanism, lambda u, m: secret if u == "alice" else None)
        first = server.first(f"n,,n={user},r=abc".encode()).decode()
        nonce = first.split(",")[0][2:]
        with pytest.raises(ScramError, match="bad user name or password"):
            server.final(f"c=biws,r={nonce},p={base64.b64encode(bytes(32)).decode()}".encode())
        assert server.user is None
    with pytest.raises(ScramError):
        ScramServer(mechanism, lambda u, m: secret).first(b"p=tls-unique,,n=alice,r=x")


# -- the users file and the CLI --------------------------------------------------------------


def test_missing_file_means_guest_only(tmp_path):
    users = read_users(str(tmp_path / "users.toml"))
    assert list(users) == ["guest"]
    guest = users["guest"]
    assert guest.tags == ["administrator"]
    assert guest.permissions["*"] == Permission(".*", ".*", ".*")
    auth = Authorizer(lambda: {"guest": guest})
    for vhost in ("/", "shop", None):
        assert auth(Identity("guest", "amqp"), vhost, "configure", "queue", "q")
    assert verify_password("guest", guest.password_hash)


def test_cli_manages_the_file(tmp_path, capsys):
    path = tmp_path / "data" / "users.toml"
    assert users_cmd(path, "add", "alice", "--password", "pw1", "--tags", "monitoring",
                     "--configure", "^alice\\.", "--write", ".*", "--read", ".*") == 0  # fmt: skip
    assert (os.stat(path).st_mode & 0o777) == 0o600
    users = read_users(str(path))
    assert set(users) == {"alice", "guest"}  # the implicit guest is written along
    alice = users["alice"]
    assert alice.tags == ["monitoring"]
    assert alice.permissions["/"] == Permission("^alice\\.", ".*", ".*")
    assert set(alice.scram) == {"SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert verify_password("pw1", alice.password_hash)
    assert users_cmd(path, "passwd", "alice", "--password", "pw2", "--no-scram") == 0
    alice = read_users(str(path))["alice"]
    assert verify_password("pw2", alice.password_hash) and not alice.scram
    assert users_cmd(path, "set-permissions", "alice", "--vhost", "v2", "", "^out$", "%u") == 0
    assert read_users(str(path))["alice"].permissions["v2"] == Permission("", "^out$", "%u")
    assert users_cmd(path, "clear-permissions", "alice") == 0
    assert "/" not in read_users(str(path))["alice"].permissions
    assert users_cmd(path, "set-tags", "alice", "administrator") == 0
    assert users_cmd(path, "delete", "guest") == 0
    capsys.readouterr()
    assert users_cmd(path, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert list(listed) == ["alice"] and listed["alice"]["tags"] == ["administrator"]
    assert "pw2" not in path.read_text() and "pbkdf2-sha256$" in path.read_text()
    # refusals: exit status 1 and one line saying why
    assert users_cmd(path, "add", "alice", "--password", "x") == 1
    assert users_cmd(path, "delete", "bob") == 1
    assert users_cmd(path, "set-permissions", "alice", "(", ".*", ".*") == 1
    assert users_cmd(path, "add", "a+b", "--password", "x") == 1
    assert users_cmd(path, "set-tags", "alice", "superuser") == 1
    err = capsys.readouterr().err
    assert "exists already" in err and "no user 'bob'" in err and "bad regular expression" in err


def test_cli_reads_the_password_from_stdin(tmp_path):
    path = tmp_path / "users.toml"
    cmd = [sys.executable, "-m", "polymq.core", "users", "add", "carol", "--password-stdin",
           "--set", f"security.users_file={json.dumps(str(path))}"]  # fmt: skip
    p = subprocess.run(cmd, input="from stdin\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert verify_password("from stdin", read_users(str(path))["carol"].password_hash)


def test_bad_file_is_reported_with_the_entry(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text('[users.x]\npassword = "plain"\n')
    with pytest.raises(UsersFileError, match="users.x.password"):
        read_users(str(path))
    path.write_text('[users.x.permissions."/"]\nwrite = "("\n')
    with pytest.raises(UsersFileError, match="write"):
        read_users(str(path))


# -- permissions ------------------------------------------------------------------------------


def make_users() -> dict[str, User]:
    return {
        "alice": User(
            "alice",
            permissions={
                "/": Permission("^alice\\.", "^(amq\\.topic|amq\\.default|logs)$", "^alice\\."),
                "other": Permission("", "", ".*"),
            },
        ),
        "dev": User("dev", permissions={"/": Permission("", "^devices/%c/", "^devices/%u/")}),
        "nobody": User("nobody"),
    }


def ident(user: str) -> Identity:
    return Identity(user, "mqtt")


def test_authorizer_follows_the_three_regexes_per_vhost():
    auth = Authorizer(make_users)
    a = ident("alice")
    assert auth(a, "/", "configure", "queue", "alice.q1")
    assert not auth(a, "/", "configure", "queue", "bob.q1")
    assert auth(a, "/", "write", "exchange", "logs")
    assert auth(a, "/", "write", "exchange", "")  # the default exchange is "amq.default"
    assert not auth(a, "/", "write", "exchange", "logs2")
    assert auth(a, "/", "read", "queue", "alice.q1")
    assert not auth(a, "/", "read", "queue", "other")
    # another vhost has other rules; an empty pattern grants nothing
    assert auth(a, "other", "read", "queue", "anything")
    assert not auth(a, "other", "write", "exchange", "logs")
    # no entry for the vhost, no such user, no identity: nothing
    assert not auth(a, "third", "read", "queue", "alice.q1")
    assert not auth(ident("nobody"), "/", "read", "queue", "x")
    assert not auth(ident("ghost"), "/", "read", "queue", "x")
    assert not auth(None, "/", "read", "queue", "x")
    assert not auth(a, "/", "delete-everything", "queue", "alice.q1")


def test_per_client_patterns_substitute_user_and_client_id_escaped():
    auth = Authorizer(make_users)
    d = ident("dev")
    assert auth(d, "/", "write", "topic", "devices/sensor-1/temp", "sensor-1")
    assert not auth(d, "/", "write", "topic", "devices/sensor-2/temp", "sensor-1")
    assert not auth(d, "/", "write", "topic", "devices/sensor-1/temp", None)
    assert auth(d, "/", "read", "topic", "devices/dev/cmd", "sensor-1")
    # a client id with regex characters cannot widen the pattern
    assert not auth(d, "/", "write", "topic", "devices/aXb/t", "a.b")
    assert auth(d, "/", "write", "topic", "devices/a.b/t", "a.b")


def test_decisions_are_cached_until_cleared():
    users = make_users()
    auth = Authorizer(lambda: users)
    a = ident("alice")
    assert auth(a, "/", "write", "exchange", "logs")
    users["alice"].permissions["/"] = Permission()
    assert auth(a, "/", "write", "exchange", "logs")  # the cached decision
    auth.clear()
    assert not auth(a, "/", "write", "exchange", "logs")


# -- the login policy -------------------------------------------------------------------------


def manager(tmp_path, **section) -> SecurityManager:
    return SecurityManager(dict(section), data_dir=str(tmp_path))


def test_loopback_addresses():
    for host in ("127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "192.0.2.7", "::ffff:10.0.0.1", "fe80::1", "", None, "localhost"):
        assert not is_loopback(host), host


def test_guest_only_from_loopback(tmp_path):
    m = manager(tmp_path)
    assert m.authenticate("amqp", "guest", "guest", LOCAL) == Identity("guest", "amqp")
    refusal = m.authenticate("amqp", "guest", "guest", REMOTE)
    assert refusal == Refusal("user 'guest' can only connect via localhost")
    # the peer forms adapters pass: Twisted addresses, tuples, "host:port" strings
    from twisted.internet.address import IPv4Address, IPv6Address

    assert isinstance(m.authenticate("mqtt", "guest", "guest", IPv4Address("TCP", "10.1.2.3", 5)),
                      Refusal)  # fmt: skip
    assert m.authenticate("mqtt", "guest", "guest", IPv6Address("TCP", "::1", 5)).user == "guest"
    assert m.authenticate("kafka", "guest", "guest", "127.0.0.1:5555").user == "guest"
    assert isinstance(m.authenticate("kafka", "guest", "guest", "198.51.100.1:5555"), Refusal)
    assert isinstance(m.authenticate("kafka", "guest", "guest", None), Refusal)


def test_clients_without_a_user_name(tmp_path):
    m = manager(tmp_path)
    assert m.authenticate("mqtt", None, None, LOCAL) == Identity("guest", "mqtt")
    assert isinstance(m.authenticate("mqtt", None, None, REMOTE), Refusal)
    m = manager(tmp_path, anonymous_user="")
    assert isinstance(m.authenticate("mqtt", "", None, LOCAL), Refusal)
    m = manager(tmp_path, allow_anonymous=True)
    assert m.authenticate("mqtt", None, None, REMOTE) == Identity("anonymous", "mqtt")
    # without an "anonymous" user in the file, allowed anonymous clients may do anything
    assert m.authorizer(Identity("anonymous", "mqtt"), "/", "write", "topic", "a")


def test_users_from_the_file_and_one_refusal_text(tmp_path):
    path = tmp_path / "users.toml"
    assert users_cmd(path, "add", "alice", "--password", "s3cret") == 0
    m = manager(tmp_path)
    assert m.authenticate("mqtt", "alice", "s3cret", REMOTE) == Identity("alice", "mqtt")
    assert m.authenticate("mqtt", b"alice", b"s3cret", REMOTE) == Identity("alice", "mqtt")
    wrong = m.authenticate("mqtt", "alice", "nope", REMOTE)
    unknown = m.authenticate("mqtt", "bob", "nope", REMOTE)
    assert wrong == unknown == Refusal("bad user name or password")
    # a verified certificate proves a known user, and only a known one
    cert = CertificateCredential("CN=alice")
    assert m.authenticate("mqtt", "alice", cert, REMOTE) == Identity("alice", "mqtt")
    assert isinstance(m.authenticate("mqtt", "mallory", cert, REMOTE), Refusal)


def test_repeated_failures_from_one_address_are_refused_without_hashing(tmp_path):
    assert users_cmd(tmp_path / "users.toml", "add", "alice", "--password", "pw") == 0
    m = manager(tmp_path)
    other = ("192.0.2.99", 1)
    # alice logged in once before the flood: her verified password needs no hashing
    assert m.authenticate("mqtt", "alice", "pw", REMOTE).user == "alice"
    for _ in range(10):
        assert m.authenticate("mqtt", "guest", "bad", REMOTE) == Refusal(
            "bad user name or password"
        )
    hashed = m.hashes_started
    throttled = m.authenticate("mqtt", "guest", "guest", REMOTE)
    assert throttled.reason.startswith("too many failed logins")
    assert m.authenticate("mqtt", "bob", "guess", REMOTE).reason.startswith("too many")
    assert m.authenticate("mqtt", "alice", "pw", REMOTE).user == "alice"
    assert m.hashes_started == hashed  # refused (or known good) without spending a hash
    for _ in range(11):  # loopback is never throttled
        assert m.authenticate("mqtt", "bob", "bad", LOCAL) == Refusal("bad user name or password")
    # another address is not affected (guest is refused there for being remote, not throttled)
    assert "localhost" in m.authenticate("mqtt", "guest", "guest", other).reason


def test_the_file_is_reloaded_on_change_and_a_bad_one_is_ignored(tmp_path):
    path = tmp_path / "users.toml"
    m = manager(tmp_path)
    assert isinstance(m.authenticate("mqtt", "alice", "pw", REMOTE), Refusal)
    assert users_cmd(path, "add", "alice", "--password", "pw", "--write", ".*") == 0
    assert m.reload_if_changed()
    assert m.authenticate("mqtt", "alice", "pw", REMOTE) == Identity("alice", "mqtt")
    assert m.authorizer(Identity("alice", "mqtt"), "/", "write", "exchange", "x")
    assert users_cmd(path, "set-permissions", "alice", "", "", "") == 0
    assert m.reload_if_changed()
    assert not m.authorizer(Identity("alice", "mqtt"), "/", "write", "exchange", "x")
    users = read_users(str(path))
    path.write_text("this is [not toml")
    assert not m.reload_if_changed()
    assert set(m.users) == set(users)  # the previous users stay
    write_users(str(path), {})
    assert m.reload_if_changed() and m.users == {}
    assert isinstance(m.authenticate("mqtt", "guest", "guest", LOCAL), Refusal)
