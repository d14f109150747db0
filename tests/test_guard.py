"""The web refuses a foreign Host (DNS rebinding) and a foreign Origin on WebSockets and state changes."""
from __future__ import annotations

import sqlite3

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.system import Tab


def test_a_foreign_host_gets_400(system):
    response = httpx.get(system.url + "/", headers={"Host": f"evil.example:{system.web_port}"}, timeout=5)
    assert response.status_code == 400
    assert httpx.get(system.url + "/", headers={"Host": f"localhost:{system.web_port}"}, timeout=5).status_code == 200


def test_a_cross_site_post_is_refused_and_stores_nothing(system):
    response = httpx.post(system.url + "/todos", data={"title": "csrf"}, headers={"Origin": "http://evil.example"},
                          timeout=5)
    assert response.status_code == 403
    same_site = httpx.post(system.url + "/todos", data={"title": "mine"}, headers={"Origin": system.url}, timeout=5)
    assert same_site.status_code == 200
    with sqlite3.connect(system.data_dir / "app.sqlite3") as db:
        assert [row[0] for row in db.execute("SELECT title FROM todos")] == ["mine"]


def test_a_cross_site_websocket_is_refused(system):
    with pytest.raises(InvalidStatus) as refused:
        Tab(system.ws_url, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    tab = Tab(system.ws_url, origin=system.url)
    tab.wait_for_text("llm-status")
    tab.close()
