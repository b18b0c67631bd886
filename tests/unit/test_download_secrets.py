"""Redaction of URLs and messages, and where a download's credentials come from."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from features.download import credentials
from features.download.credentials import check_header_environment, resolve, split_userinfo
from features.download.secrets import redact_text, redact_url
from schemas.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://alice:s3cret@h:8080/a/{image_id}.jpg", "http://alice:***@h:8080/a/{image_id}.jpg"),
        ("https://ghp_TOKEN@github.com/x.jpg", "https://***@github.com/x.jpg"),
        ("http://a:p%40ss%2Fw@h/x", "http://a:***@h/x"),
        ("https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
         "&X-Amz-Credential=AKIA%2F2024&X-Amz-Security-Token=tok&X-Amz-Signature=abc123",
         "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
         "&X-Amz-Credential=***&X-Amz-Security-Token=***&X-Amz-Signature=***"),
        ("https://storage.googleapis.com/b/k?X-Goog-Credential=sa%40p&X-Goog-Signature=ff&x=1",
         "https://storage.googleapis.com/b/k?X-Goog-Credential=***&X-Goog-Signature=***&x=1"),
        ("https://acct.blob.core.windows.net/c/k.jpg?sv=2022-11-02&sp=r&sig=AbC%3D",
         "https://acct.blob.core.windows.net/c/k.jpg?sv=2022-11-02&sp=r&sig=***"),
        ("https://cdn/x.jpg?Signature=s&Key-Pair-Id=K&access_token=t&api_key=k&token=z",
         "https://cdn/x.jpg?Signature=***&Key-Pair-Id=***&access_token=***&api_key=***&token=***"),
        ("gs://bucket/images/a.jpg", "gs://bucket/images/a.jpg"),
        ("https://h/x.jpg?size=large&v=2#frag", "https://h/x.jpg?size=large&v=2#frag"),
        ("/data/images/a.jpg", "/data/images/a.jpg"),
        ("http://u:pw@[::1/x?sig=1", "http://u:***@[::1/x?sig=***"),  # unparsable host
    ],
    ids=["userinfo", "lone-token", "percent-encoded", "s3-presigned", "gcs-signed", "azure-sas",
         "cloudfront-and-tokens", "fsspec", "harmless-query", "plain-path", "bad-ipv6"],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_masks_every_url_and_the_given_values() -> None:
    text = ("failed: http://a:pw1@h/x.zip,https://b:pw2@g/y.zip?token=pw3 "
            "(\"gs://b/k?X-Goog-Signature=pw4\") header Bearer pw5-long")
    redacted = redact_text(text, secrets=("pw5-long",))
    for secret in ("pw1", "pw2", "pw3", "pw4", "pw5-long"):
        assert secret not in redacted
    assert "http://a:***@h/x.zip,https://b:***@g/y.zip?token=***" in redacted


def test_split_userinfo_percent_decodes_and_strips() -> None:
    assert split_userinfo("http://al%20ice:p%40s%3As@h:81/x?q=1") == (
        "http://h:81/x?q=1", "al ice", "p@s:s")
    assert split_userinfo("https://TOKEN@h/x") == ("https://h/x", "TOKEN", None)
    assert split_userinfo("https://h/x") == ("https://h/x", None, None)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _netrc(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "netrc"
    path.write_text(text)
    return {"NETRC": str(path)}


def test_resolve_precedence_userinfo_host_header_global_header_netrc(tmp_path: Path) -> None:
    env = {**_netrc(tmp_path, "machine h.example login nu password npw\n"),
           "MLSP_DOWNLOAD_HEADER": "Authorization: Bearer global-tok",
           "MLSP_DOWNLOAD_HEADER_H_EXAMPLE": "X-Api-Key: host-key"}
    url = "http://u:p%2F1@h.example:8/x"
    assert resolve(url, env).headers == {"Authorization": _basic("u", "p/1")}
    assert resolve(url, env).url == "http://h.example:8/x"
    bare = "http://h.example:8/x"
    assert resolve(bare, env).headers == {"X-Api-Key": "host-key"}
    del env["MLSP_DOWNLOAD_HEADER_H_EXAMPLE"]
    assert resolve(bare, env).headers == {"Authorization": "Bearer global-tok"}
    del env["MLSP_DOWNLOAD_HEADER"]
    found = resolve(bare, env)
    assert found.headers == {"Authorization": _basic("nu", "npw")}
    assert "netrc" in found.origin and "npw" not in found.origin
    assert resolve("http://other.example/x", env).headers == {}


def test_netrc_default_entry_and_home_fallback(tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("default login d password dpw\n")
    found = resolve("https://anything.example/x", {"HOME": str(tmp_path)})
    assert found.headers == {"Authorization": _basic("d", "dpw")}
    assert str(tmp_path / ".netrc") in found.origin


def test_unreadable_netrc_is_ignored_with_a_warning(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    env = _netrc(tmp_path, "machine h login a password b bogus x\n")  # a parse error
    with caplog.at_level("WARNING", logger="features.download.credentials"):
        assert resolve("http://h/x", env).headers == {}
    assert "is ignored" in caplog.text


@pytest.mark.parametrize("value", ["no colon", ": value", "Bad Name: v", "X-Key:", "A: b\r\nC: d"])
def test_malformed_header_variables_are_config_errors_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_header_environment({"MLSP_DOWNLOAD_HEADER_H": value, "PATH": "/bin"})
    assert "MLSP_DOWNLOAD_HEADER_H" in str(error.value)
    assert error.value.exit_code == 2


def test_header_variable_names_and_secrets_to_mask() -> None:
    assert credentials.host_variable("data-1.example.com") == "MLSP_DOWNLOAD_HEADER_DATA_1_EXAMPLE_COM"
    found = resolve("http://h/x", {"MLSP_DOWNLOAD_HEADER": "Authorization: Bearer tok-123"})
    assert "tok-123" in found.secrets and "tok-123" not in found.origin
    assert check_header_environment({"MLSP_DOWNLOAD_HEADER": "A: b", "HOME": "/"}) == [
        "MLSP_DOWNLOAD_HEADER"]


def test_orchestration_logs_and_errors_of_a_step_hold_no_secret(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import sys
    import types

    from orchestration import tasks
    from schemas.errors import OrchestrationError

    module = types.ModuleType("fake_download_cli")
    module.run = lambda argv: 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_download_cli", module)
    source = "https://alice:pw-77aa@h/{image_id}.jpg?X-Goog-Signature=sig-88bb"
    with caplog.at_level("INFO", logger="orchestration.tasks"), \
            pytest.raises(OrchestrationError) as error:
        tasks.run_step("fake_download_cli", ["--source", source])
    for text in (str(error.value), caplog.text):
        assert "alice:***@h" in text and "pw-77aa" not in text and "sig-88bb" not in text
