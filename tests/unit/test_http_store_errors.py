"""A store that cannot be reached is a 503 the caller may retry, never a 500; other store errors stay 500."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError, OperationalError

from shared.http import install_error_handlers


def app_raising(exc: Exception) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("SELECT 1", None, Exception("could not connect")),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_unreachable_store_is_503(exc: Exception) -> None:
    response = app_raising(exc).get("/boom")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"] == "1"


def test_other_store_errors_stay_500() -> None:
    assert app_raising(IntegrityError("INSERT", None, Exception("dup"))).get("/boom").status_code == 500
