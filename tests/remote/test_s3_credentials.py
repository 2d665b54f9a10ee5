"""Dummy S3 credentials only for a loopback endpoint: anything else uses botocore's chain."""

from __future__ import annotations

import logging

import pytest
from aiobotocore.config import AioConfig

from cachedaemon.remote import s3


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/absent")
    s3._warned_dummy.clear()


@pytest.mark.parametrize("endpoint", ["http://10.1.2.3:9000", "https://minio.example.com",
                                      "http://192.168.1.5:5000", "http://[fd00::1]:9000"])
def test_a_remote_endpoint_never_gets_dummy_credentials(no_credentials: None,
                                                        endpoint: str) -> None:
    kwargs = s3.client_kwargs(endpoint, "us-east-1", AioConfig())
    assert kwargs["endpoint_url"] == endpoint
    assert "aws_access_key_id" not in kwargs and "aws_secret_access_key" not in kwargs


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:5000", "http://localhost:9000",
                                      "http://[::1]:5000", "http://127.3.4.5:80"])
def test_a_loopback_endpoint_gets_dummy_credentials_with_a_warning(
        no_credentials: None, endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        kwargs = s3.client_kwargs(endpoint, "us-east-1", AioConfig())
        s3.client_kwargs(endpoint, "us-east-1", AioConfig())
    assert kwargs["aws_access_key_id"] == "testing"
    assert caplog.text.count("dummy credentials") == 1  # once per endpoint


def test_configured_credentials_win_even_on_loopback(no_credentials: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREAL")
    kwargs = s3.client_kwargs("http://127.0.0.1:5000", "us-east-1", AioConfig())
    assert "aws_access_key_id" not in kwargs
