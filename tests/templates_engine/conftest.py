"""Template fixtures: an author and an approver, and a helper to take versions through the lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ccm.auth.models import Role


@dataclass
class Studio:
    """Two people: an author who writes, an approver who reviews (and a second author who may edit)."""

    client: TestClient
    author: dict[str, str]
    approver: dict[str, str]
    other_author: dict[str, str]

    def create(self, key: str, **fields: Any) -> Any:
        response = self.client.post(
            "/v1/templates", json={"key": key, "name": key, **fields}, headers=self.author
        )
        assert response.status_code == 201, response.text
        return response.json()

    def draft(self, key: str, body: dict[str, Any]) -> Any:
        response = self.client.post(f"/v1/templates/{key}/versions", json=body, headers=self.author)
        assert response.status_code == 201, response.text
        return response.json()

    def act(self, key: str, number: int, verb: str, who: dict[str, str], body: Any = None) -> Any:
        return self.client.post(f"/v1/templates/{key}/versions/{number}/{verb}", json=body, headers=who)

    def live(self, key: str, body: dict[str, Any]) -> int:
        """A new version taken all the way to published."""
        number = int(self.draft(key, body)["number"])
        for verb, who in (("submit", self.author), ("approve", self.approver), ("publish", self.approver)):
            response = self.act(key, number, verb, who)
            assert response.status_code == 200, (verb, response.text)
        return number


@pytest.fixture
def studio(client: TestClient, role_keys: dict[Role, dict[str, str]], admin: dict[str, str]) -> Studio:
    second = client.post("/v1/keys", json={"name": "second author", "role": "author"}, headers=admin).json()
    return Studio(
        client=client,
        author=role_keys[Role.author],
        approver=role_keys[Role.approver],
        other_author={"Authorization": f"Bearer {second['key']}"},
    )
