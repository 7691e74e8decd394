"""Every SQL example of docs/history.md runs on a real archive (runs archived by a real
stack), and the ones that should find rows find them."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from harness import ROOT, MakeStack, echo, edge, eventually, request

DOC = ROOT / "docs" / "history.md"
SQL = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[str]:
    return SQL.findall(DOC.read_text())


async def test_the_sql_examples_of_the_history_doc_run(
    postgres_url: str, make_stack: MakeStack
) -> None:
    stack = await make_stack(postgres_url=postgres_url, migrate_at_start=True)
    llm = {"id": "think", "llm": {"prompt": "hello"}}
    gid, _ = await stack.client.run(
        request([echo("a", v=1), llm], [edge("a", "think")], metadata={"team": "blue"})
    )
    failed, _ = await stack.client.run(
        request([{"id": "x", "tool": {"name": "fail"}}], name="nightly-report")
    )

    async def both_archived() -> bool:
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            try:
                cur = await conn.execute("SELECT count(*) FROM dago_runs")
            except psycopg.errors.UndefinedTable:  # not migrated yet (the archiver does it)
                return False
            row = await cur.fetchone()
        return row is not None and row[0] == 2

    await eventually(both_archived)
    # Each example's rows (the DELETE's: how many it deleted), in the page's order.
    found: list[Any] = []
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        for sql in examples():
            cur = await conn.execute(sql.replace("0-01JEXAMPLE00000000000000000", gid).encode())
            found.append(await cur.fetchall() if cur.description else cur.rowcount)
    deleted, failures, costs, events, slow = found
    assert deleted == 0  # nothing is 180 days old
    assert [r[0] for r in failures] == [failed]
    assert [r[1] for r in costs] == ["offline"]
    assert len(events) == len(await stack.client.history(gid))
    assert {r[0] for r in slow} == {gid}
