"""Password files, the environment variable, and a password that never shows: in repr, str, options or tasks."""

from __future__ import annotations

import pickle

import pytest

from pipeline.convert import ConvertOptions
from pipeline.errors import UsageError
from pipeline.source.passwords import PASSWORD_VARIABLE, Password, Passwords, passwords_from_environment
from pipeline.source.passwords import read_password_file as read


def _file(tmp_path, content: bytes):
    path = tmp_path / "pw"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"s3cret\n", b"s3cret"),
        (b"s3cret", b"s3cret"),
        (b"with spaces and: colons \r\n", b"with spaces and: colons "),  # only the line ending goes
        (b"#starts with a hash\n", b"#starts with a hash"),  # a single line is the password, whatever it holds
        ("pässwörd\n".encode(), "pässwörd".encode()),
    ],
)
def test_one_line_is_the_password_of_every_archive(tmp_path, content, expected):
    passwords = read(_file(tmp_path, content))
    for archive in ("SSMSpine_Train.zip", "/data/SSMSpine_Test.zip", "s3://b/x/anything.zip"):
        assert passwords.for_archive(archive).reveal() == expected


def test_named_lines_give_each_archive_its_password_and_a_star_the_rest(tmp_path):
    content = b"# from the authors\n\nSSMSpine_Train.zip: train pw: with colon\r\nSSMSpine_Test.zip: test\n*: other\n"
    passwords = read(_file(tmp_path, content))
    assert passwords.for_archive("/x/SSMSpine_Train.zip").reveal() == b"train pw: with colon"
    assert passwords.for_archive("https://host/SSMSpine_Test.zip?sig=1").reveal() == b"test"
    assert passwords.for_archive("Extra.zip").reveal() == b"other"
    only_named = read(_file(tmp_path, b"SSMSpine_Train.zip: a\n"))
    assert only_named.for_archive("SSMSpine_Train.zip").reveal() == b"a"
    assert only_named.for_archive("SSMSpine_Test.zip") is None


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "holds no password"),
        (b"\n", "holds no password"),
        (b"SSMSpine_Train.zip: a\nthis line is not named\n", "line 2 is neither"),
        (b"SSMSpine_Train.zip: \n*: x\n", "line 1 gives SSMSpine_Train.zip an empty password"),
    ],
)
def test_a_bad_password_file_is_one_line_that_quotes_no_password(tmp_path, content, reason):
    with pytest.raises(UsageError, match=reason) as caught:
        read(_file(tmp_path, content))
    assert "this line is not named" not in str(caught.value)


def test_a_missing_password_file_names_itself(tmp_path):
    with pytest.raises(UsageError, match=r"password file .*nowhere: cannot be read"):
        read(tmp_path / "nowhere")


def test_the_environment_variable_is_the_password_of_every_archive(monkeypatch):
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    assert not passwords_from_environment()
    monkeypatch.setenv(PASSWORD_VARIABLE, "from env")
    assert passwords_from_environment().for_archive("a.zip").reveal() == b"from env"


def test_a_password_never_shows_but_travels_to_workers():
    secret = "do-not-print-me"
    options = ConvertOptions(passwords=Passwords(by_name={"a.zip": Password(secret)}, default=Password(secret)))
    for text in (repr(options), str(options), repr(options.passwords), str(Password(secret)), f"{Password(secret)}"):
        assert secret not in text
    travelled = pickle.loads(pickle.dumps(options.passwords))
    assert travelled.for_archive("a.zip").reveal() == secret.encode()


def test_an_empty_password_is_refused():
    with pytest.raises(UsageError, match="empty password"):
        Password("")


def test_blank_lines_at_the_end_of_a_one_line_file_hold_nothing(tmp_path):
    assert read(_file(tmp_path, b"s3cret\n\n\r\n")).for_archive("a.zip").reveal() == b"s3cret"
