"""Graphs as Mermaid flowcharts and Graphviz DOT, node states of a run as colours."""

from __future__ import annotations

from collections.abc import Mapping

from dago.v1 import graph_pb2

# Fill and border per node state (the names of dago_client.node_state_name).
STATE_COLOURS: dict[str, tuple[str, str]] = {
    "pending": ("#eeeeee", "#9e9e9e"),
    "queued": ("#fff8e1", "#f9a825"),
    "running": ("#bbdefb", "#1565c0"),
    "retrying": ("#ffe0b2", "#ef6c00"),
    "waiting": ("#e1bee7", "#6a1b9a"),
    "completed": ("#c8e6c9", "#2e7d32"),
    "failed": ("#ffcdd2", "#c62828"),
    "skipped": ("#f5f5f5", "#bdbdbd"),
    "cancelled": ("#cfd8dc", "#455a64"),
    "dead_lettered": ("#f8bbd0", "#ad1457"),
}


def node_kind(node: graph_pb2.Node) -> str:
    """A short description of what a node does: ``tool:echo``, ``llm``, ``router:llm``..."""
    kind = node.WhichOneof("kind") or "?"
    if kind == "tool":
        return f"tool:{node.tool.name}"
    if kind == "llm" and node.llm.model:
        return f"llm:{node.llm.model}"
    if kind == "http":
        return f"http:{node.http.method or 'GET'}"
    if kind == "router" and node.router.mode > graph_pb2.ROUTER_MODE_DETERMINISTIC:
        mode = graph_pb2.RouterMode.Name(node.router.mode).removeprefix("ROUTER_MODE_")
        return f"router:{mode.lower()}"
    return kind


def edge_label(edge: graph_pb2.Edge, limit: int = 40) -> str:
    """The label shown on an edge: its route label and/or condition (shortened)."""
    cond = edge.condition.strip()
    if len(cond) > limit:
        cond = cond[: limit - 1] + "…"
    if edge.label and cond:
        return f"{edge.label}: {cond}"
    return edge.label or (f"if {cond}" if cond else "")


def _mermaid_text(text: str) -> str:
    # Inside "..." Mermaid reads HTML entities; these characters would end the label.
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("|", "#124;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
    )


def mermaid(graph: graph_pb2.Graph, states: Mapping[str, str] | None = None) -> str:
    """A Mermaid flowchart; with ``states`` (node id -> state name) nodes are coloured."""
    lines = ["flowchart TD"]
    for node in graph.nodes:
        label = _mermaid_text(f"{node.id}\n{node_kind(node)}").replace("\n", "<br/>")
        nid = f"n_{node.id}"  # a prefix keeps ids like `end` from being Mermaid keywords
        if node.WhichOneof("kind") == "router":
            lines.append(f'    {nid}{{"{label}"}}')
        else:
            lines.append(f'    {nid}["{label}"]')
    for edge in graph.edges:
        text = edge_label(edge)
        arrow = f'-->|"{_mermaid_text(text)}"|' if text else "-->"
        lines.append(f"    n_{getattr(edge, 'from')} {arrow} n_{edge.to}")
    if states:
        used = sorted({s for s in states.values() if s in STATE_COLOURS})
        for state in used:
            fill, stroke = STATE_COLOURS[state]
            dash = ",stroke-dasharray:4 3" if state == "skipped" else ""
            lines.append(f"    classDef {state} fill:{fill},stroke:{stroke},color:#000{dash}")
        for node in graph.nodes:
            state = states.get(node.id, "")
            if state in STATE_COLOURS:
                lines.append(f"    class n_{node.id} {state}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(graph: graph_pb2.Graph, states: Mapping[str, str] | None = None) -> str:
    """A Graphviz digraph; with ``states`` nodes are filled with their state's colour."""
    name = graph.name or "dago"
    lines = [
        f"digraph {_dot_quote(name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in graph.nodes:
        label = node.id + "\n" + node_kind(node)
        attrs = [f"label={_dot_quote(label)}"]
        if node.WhichOneof("kind") == "router":
            attrs.append('shape=diamond, style="filled"')
        state = (states or {}).get(node.id, "")
        if state in STATE_COLOURS:
            fill, stroke = STATE_COLOURS[state]
            attrs.append(f'fillcolor="{fill}", color="{stroke}"')
            attrs.append(f"tooltip={_dot_quote(state)}")
            if state == "skipped":
                attrs.append('style="rounded,filled,dashed"')
        lines.append(f"  {_dot_quote(node.id)} [{', '.join(attrs)}];")
    for edge in graph.edges:
        text = edge_label(edge)
        attr = f" [label={_dot_quote(text)}]" if text else ""
        lines.append(f"  {_dot_quote(getattr(edge, 'from'))} -> {_dot_quote(edge.to)}{attr};")
    lines.append("}")
    return "\n".join(lines) + "\n"
