"""Tracking fixtures: one local MLflow store per session (creating its tables takes seconds) and its client."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A SQLite MLflow store shared by the session's tests (each test uses its own experiment)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def client(mlflow_uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri)
