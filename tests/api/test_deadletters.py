"""Dead letters: a poison message (its worker dies on every delivery) is dead-lettered, its
node waits (DEAD_LETTERED, the graph keeps running), and an operator requeues it (it runs
and the graph completes) or drops it (the node and the graph fail) through REST routes
transcoded by Envoy, and the gRPC RPCs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from harness import (
    RunningStack,
    eventually,
    node_states,
    of_kind,
    rpc_error,
    start_api_quickly,
)
from obshelpers import TOOLS, envoy, marker, poison
from redisfixture import RedisServer

# API and workers run as processes (python -m dago serve|worker).
pytestmark = pytest.mark.process


@pytest.mark.edge
async def test_poison_message_is_dead_lettered_then_requeued_or_dropped(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    env = {
        "DAGO_MAX_DELIVERIES": "1",
        "DAGO_TOOL_MODULES": TOOLS,
        "DAGO_AUTH": "off",
        "DAGO_WORKER_HEARTBEAT_MS": "200",
    }
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        for name in ("w1", "w2", "w3"):  # at most two die (first deliveries only)
            stack.start(name, "worker")
        await start_api_quickly(stack)
        stub = stack.client.stub
        async with envoy(stack) as http:
            mark_a, mark_b = marker(tmp_path, "a"), marker(tmp_path, "b")
            gid_a = await stack.client.submit(poison(mark_a))
            gid_b = await stack.client.submit(poison(mark_b))

            async def both_dead() -> bool:
                resp = await stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest())
                return {d.graph_id for d in resp.dead_letters} == {gid_a, gid_b}

            await eventually(both_dead, 20, 0.1)
            died = [n for n, p in stack.procs.items() if p.poll() is not None]
            assert 1 <= len(died) <= 2, died
            assert all(stack.procs[n].returncode == 17 for n in died)

            # The graphs keep running; the poisoned node waits, its successor too.
            for gid in (gid_a, gid_b):
                st = await stack.client.status(gid)
                assert st.state == execution_pb2.GRAPH_STATE_RUNNING
                assert node_states(st) == {"p": "DEAD_LETTERED", "after": "PENDING"}
                p = next(n for n in st.nodes if n.node_id == "p")
                assert p.error.error_class == graph_pb2.ERROR_CLASS_DEAD_LETTER

            # REST through Envoy: newest first, paged, with what an operator needs.
            r = await http.get("/api/v1/dead-letters", params={"page_size": 1})
            assert r.status_code == 200, r.text
            first = r.json()
            assert len(first["dead_letters"]) == 1 and first["next_page_token"]
            r = await http.get(
                "/api/v1/dead-letters",
                params={"page_size": 1, "page_token": first["next_page_token"]},
            )
            second = r.json()
            assert len(second["dead_letters"]) == 1 and not second["next_page_token"]
            listed = {d["graph_id"]: d for d in first["dead_letters"] + second["dead_letters"]}
            assert set(listed) == {gid_a, gid_b}
            a = listed[gid_a]
            assert (a["node_id"], a["attempt"], a["iteration"]) == ("p", 1, 1)
            assert a["deliveries"] == 2 and a["current"] is True
            assert a["error"]["error_class"] == "ERROR_CLASS_DEAD_LETTER"
            assert "2 times" in a["error"]["message"]
            assert a["create_time"].endswith("Z")
            assert a["dead_letter_id"].startswith(gid_a.split("-")[0] + "-")
            r = await http.get("/api/v1/dead-letters", params={"graph_id": gid_b})
            assert [d["graph_id"] for d in r.json()["dead_letters"]] == [gid_b]

            events = await stack.client.history(gid_a)
            (dl,) = of_kind(events, "node_dead_lettered", "p")
            assert dl.node_dead_lettered.dead_letter_id == a["dead_letter_id"]
            assert dl.node_dead_lettered.deliveries == 2

            # Requeue A (its poison is cured): the same attempt runs again and completes.
            mark_a.unlink()
            r = await http.post(f"/api/v1/dead-letters/{a['dead_letter_id']}:requeue", json={})
            assert r.status_code == 200, r.text
            assert r.json()["graph_id"] == gid_a
            st = await stack.client.wait(gid_a, timeout=20)
            assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
            out = (await stack.client.result(gid_a)).node_outputs["p"]
            assert out.struct_value["survived"] is True
            kinds = [e.WhichOneof("payload") for e in await stack.client.history(gid_a)]
            i = kinds.index("node_requeued")
            assert kinds[i + 1 : i + 3] == ["node_started", "node_completed"], kinds
            # The dead-lettered run and the requeued one are two executions of attempt 1.
            p = next(n for n in st.nodes if n.node_id == "p")
            assert [(x.attempt, x.execution, x.state) for x in p.attempts] == [
                (1, 1, execution_pb2.NODE_STATE_DEAD_LETTERED),
                (1, 2, execution_pb2.NODE_STATE_COMPLETED),
            ]

            # Requeued letters are gone; requeueing again is NOT_FOUND (404 over REST).
            r = await http.post(f"/api/v1/dead-letters/{a['dead_letter_id']}:requeue", json={})
            assert r.status_code == 404, r.text
            err = await rpc_error(
                stub.RequeueDeadLetter(
                    orchestrator_pb2.RequeueDeadLetterRequest(dead_letter_id="0-1-1")
                )
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND
            err = await rpc_error(
                stub.DropDeadLetter(orchestrator_pb2.DropDeadLetterRequest(dead_letter_id="x"))
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND

            # Drop B: its node fails for good, and so does its graph.
            b = listed[gid_b]
            r = await http.delete(f"/api/v1/dead-letters/{b['dead_letter_id']}")
            assert r.status_code == 200, r.text
            assert r.json()["failed_node"] is True
            st = await stack.client.wait(gid_b, timeout=10)
            assert st.state == execution_pb2.GRAPH_STATE_FAILED
            assert node_states(st) == {"p": "FAILED", "after": "SKIPPED"}
            assert st.error.error_class == graph_pb2.ERROR_CLASS_DEAD_LETTER
            assert "dropped" in st.error.message
            resp = await stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest())
            assert list(resp.dead_letters) == []


async def test_a_dead_letter_of_a_cancelled_graph_is_stale(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    env = {"DAGO_MAX_DELIVERIES": "1", "DAGO_TOOL_MODULES": TOOLS, "DAGO_AUTH": "off"}
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        for name in ("w1", "w2"):
            stack.start(name, "worker")
        await start_api_quickly(stack)
        stub = stack.client.stub
        gid = await stack.client.submit(poison(marker(tmp_path)))
        listed: list[orchestrator_pb2.DeadLetter] = []

        async def dead() -> bool:
            resp = await stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest())
            listed[:] = resp.dead_letters
            return bool(listed)

        await eventually(dead, 20, 0.1)
        await stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid))
        st = await stack.client.wait(gid)
        assert node_states(st) == {"p": "CANCELLED", "after": "SKIPPED"}
        resp = await stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest(graph_id=gid))
        (d,) = resp.dead_letters
        assert not d.current
        err = await rpc_error(
            stub.RequeueDeadLetter(
                orchestrator_pb2.RequeueDeadLetterRequest(dead_letter_id=d.dead_letter_id)
            )
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        drop = await stub.DropDeadLetter(
            orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=d.dead_letter_id)
        )
        assert not drop.failed_node
        assert (await stack.client.status(gid)).state == execution_pb2.GRAPH_STATE_CANCELLED
