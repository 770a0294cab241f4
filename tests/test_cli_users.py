"""``tti users add|list|revoke``: tokens shown once, stored hashed, audited; clear refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from services.warning.workflow.store import WorkflowStore, token_hash
from shared.db import database_from_url

TTI = str(Path(sys.executable).with_name("tti"))


def tti(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TTI, *args], capture_output=True, text=True, timeout=60)


def test_users_are_added_listed_and_revoked(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/tti.db"
    added = tti("users", "add", "王警官", "--role", "police", "--db-url", db)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) >= 40 and "shown only now" in added.stderr
    again = tti("users", "add", "王警官", "--role", "police", "--db-url", db)
    assert again.returncode == 2 and "exists" in again.stderr
    bad = tti("users", "add", "x", "--role", "mayor", "--db-url", db)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr

    async def check(revoked: bool) -> None:
        store = WorkflowStore(database_from_url(db))
        await store.open()
        try:
            user = await store.user_for_token(token)
            assert (user is None) == revoked
            raw = await store.db.fetch("SELECT token_hash FROM dept_users")
            assert [r["token_hash"] for r in raw] == [token_hash(token)], "only the hash"
            actions = await store.db.fetch("SELECT action, user_name FROM dept_audit ORDER BY seq")
            assert [a["action"] for a in actions][:1] == ["user_add"]
        finally:
            await store.close()

    asyncio.run(check(revoked=False))
    listed = tti("users", "list", "--db-url", db)
    assert listed.returncode == 0
    assert "王警官\tpolice" in listed.stdout and "active" in listed.stdout
    assert token not in listed.stdout + listed.stderr
    revoked = tti("users", "revoke", "王警官", "--db-url", db)
    assert revoked.returncode == 0
    asyncio.run(check(revoked=True))
    assert "revoked" in tti("users", "list", "--db-url", db).stdout
    missing = tti("users", "revoke", "nobody", "--db-url", db)
    assert missing.returncode == 2 and "no active user" in missing.stderr
