"""Walk a server's address space and write a ready-to-paste `[[drivers]]` TOML tag config.

`browse(client, depth)` goes breadth-first from the Objects folder along hierarchical
references (HasProperty excluded: properties describe a variable, they are not tags), one
batched Browse call per level (with BrowseNext for continuation points), skipping the standard
`Server` object. For every variable it reads the DataType and ValueRank, and the
`EngineeringUnits` (EUInformation) and `EURange` properties when the node has them. `to_toml`
turns the result into a `[[drivers]]` entry: scalar numeric and boolean variables become
`[[drivers.tags]]` (node ids in the `nsu=<namespace uri>;...` form, which survives a server
that renumbers its namespaces), other variables are listed as comments.

It owns the walk and the text; the command line is `edge_agent.opcua_commands`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds

_NUMERIC = {
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
    "Number",
    "Integer",
    "UInteger",
}
_MAX_PER_CALL = 200


def _nid(ident: int) -> ua.NodeId:
    """A numeric node id of the standard namespace."""
    return ua.NodeId(ua.Int32(ident), ua.Int16(0))


def _local(ref: ua.ReferenceDescription) -> ua.NodeId:
    """The (local) node id a reference points to."""
    return ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex)


@dataclass
class Variable:
    """One variable found by the walk."""

    path: tuple[str, ...]  # browse names from below Objects
    node_id: ua.NodeId
    data_type: str = ""
    value_rank: int = -1
    unit: str = ""
    eu_range: tuple[float, float] | None = None

    @property
    def usable(self) -> bool:
        """A scalar number or boolean: what a tag of the agent can hold."""
        return self.data_type in _NUMERIC and self.value_rank in (-1, -3)


async def _browse_many(
    client: Client, nodes: Sequence[ua.NodeId], ref_type: int
) -> list[list[ua.ReferenceDescription]]:
    out: list[list[ua.ReferenceDescription]] = []
    for i in range(0, len(nodes), _MAX_PER_CALL):
        params = ua.BrowseParameters()
        params.View = ua.ViewDescription()
        params.RequestedMaxReferencesPerNode = 0
        params.NodesToBrowse = [
            ua.BrowseDescription(
                NodeId=nid,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=_nid(ref_type),
                IncludeSubtypes=True,
                NodeClassMask=int(ua.NodeClass.Object | ua.NodeClass.Variable),
                ResultMask=int(ua.BrowseResultMask.All),
            )
            for nid in nodes[i : i + _MAX_PER_CALL]
        ]
        results = await client.uaclient.browse(params)
        for res in results:
            refs = list(res.References or [])
            cp = res.ContinuationPoint
            while cp:
                nxt = ua.BrowseNextParameters()
                nxt.ContinuationPoints = [cp]
                more = (await client.uaclient.browse_next(nxt))[0]
                refs.extend(more.References or [])
                cp = more.ContinuationPoint
            out.append(refs)
    return out


async def _read(client: Client, nodes: Sequence[ua.NodeId], attr: int) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for i in range(0, len(nodes), _MAX_PER_CALL):
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(NodeId=nid, AttributeId=attr) for nid in nodes[i : i + _MAX_PER_CALL]
        ]
        out.extend(await client.uaclient.read(params))
    return out


def _type_name(dv: ua.DataValue) -> str:
    nid = dv.Value.Value if dv.Value is not None else None
    if isinstance(nid, ua.NodeId):
        if nid.NamespaceIndex == 0 and isinstance(nid.Identifier, int):
            return str(ObjectIdNames.get(nid.Identifier, nid.to_string()))
        return str(nid.to_string())
    return ""


async def browse(client: Client, depth: int = 4) -> list[Variable]:
    """Every variable within `depth` levels below Objects (not inside the Server object)."""
    hier = ObjectIds.HierarchicalReferences
    seen: set[ua.NodeId] = {_nid(ObjectIds.Server)}
    level: list[tuple[ua.NodeId, tuple[str, ...]]] = [(_nid(ObjectIds.ObjectsFolder), ())]
    found: list[Variable] = []
    for _ in range(max(depth, 1)):
        if not level:
            break
        children = await _browse_many(client, [nid for nid, _ in level], hier)
        nxt: list[tuple[ua.NodeId, tuple[str, ...]]] = []
        for (_, path), refs in zip(level, children, strict=True):
            for ref in refs:
                if ref.ReferenceTypeId == _nid(ObjectIds.HasProperty):
                    continue
                node_id = _local(ref)
                if node_id in seen:
                    continue
                seen.add(node_id)
                child = (*path, str(ref.BrowseName.Name))
                if ref.NodeClass == ua.NodeClass.Variable:
                    found.append(Variable(child, node_id))
                nxt.append((node_id, child))
        level = nxt
    await _describe(client, found)
    return found


async def _describe(client: Client, found: list[Variable]) -> None:
    nodes = [v.node_id for v in found]
    types = await _read(client, nodes, AttributeIds.DataType)
    ranks = await _read(client, nodes, AttributeIds.ValueRank)
    for v, t, r in zip(found, types, ranks, strict=True):
        v.data_type = _type_name(t)
        rank = r.Value.Value if r.Value is not None else -1
        v.value_rank = rank if isinstance(rank, int) else -1
    props = await _browse_many(client, nodes, ObjectIds.HasProperty)
    wanted: list[tuple[Variable, str, ua.NodeId]] = []
    for v, refs in zip(found, props, strict=True):
        for ref in refs:
            name = str(ref.BrowseName.Name)
            if name in ("EngineeringUnits", "EURange"):
                wanted.append(
                    (v, name, ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex))
                )
    values = await _read(client, [nid for _, _, nid in wanted], AttributeIds.Value)
    for (v, name, _), dv in zip(wanted, values, strict=True):
        value: Any = dv.Value.Value if dv.Value is not None else None
        if name == "EngineeringUnits" and isinstance(value, ua.EUInformation):
            v.unit = str(value.DisplayName.Text or "")
        elif name == "EURange" and isinstance(value, ua.Range) and value.Low < value.High:
            v.eu_range = (float(value.Low), float(value.High))


def _tag_names(found: Sequence[Variable]) -> list[str]:
    """Unique config names: the browse name, or the path when the name repeats."""

    def clean(text: str) -> str:
        out = re.sub(r"[^A-Za-z0-9_.\-]", "_", text).strip(".")
        return out if re.match(r"[A-Za-z_]", out) else f"_{out}"

    last = [clean(v.path[-1]) for v in found]
    counts: dict[str, int] = {}
    for n in last:
        counts[n] = counts.get(n, 0) + 1
    names = [
        n if counts[n] == 1 else clean(".".join(v.path)) for n, v in zip(last, found, strict=True)
    ]
    used: set[str] = set()
    out = []
    for full in names:
        base = candidate = full[:60]
        k = 2
        while candidate in used:
            candidate, k = f"{base}_{k}", k + 1
        used.add(candidate)
        out.append(candidate)
    return out


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_string(nid: ua.NodeId, namespaces: Sequence[str]) -> str:
    """`nsu=<uri>;<identifier>` (or `ns=0;...`/`i=...` for the standard namespace)."""
    text = nid.to_string()
    if nid.NamespaceIndex == 0 or nid.NamespaceIndex >= len(namespaces):
        return str(text)
    _, _, ident = text.partition(";")
    return f"nsu={namespaces[nid.NamespaceIndex]};{ident}"


def to_toml(
    found: Sequence[Variable], namespaces: Sequence[str], endpoint: str, name: str = "plc"
) -> str:
    """The `[[drivers]]` entry for the usable variables; the others as comments."""
    lines = [
        f"# {len(found)} variables found on {endpoint}",
        "[[drivers]]",
        'kind = "opcua"',
        f"name = {_toml_str(name)}",
        f"endpoint = {_toml_str(endpoint)}",
        "publishing_interval_ms = 100",
    ]
    usable = [v for v in found if v.usable]
    for v, tag in zip(usable, _tag_names(usable), strict=True):
        lines += [
            "",
            f"[[drivers.tags]]  # {'/'.join(v.path)}: {v.data_type}",
            f"name = {_toml_str(tag)}",
            f"node = {_toml_str(node_string(v.node_id, namespaces))}",
        ]
        if v.unit:
            lines.append(f"unit = {_toml_str(v.unit)}")
        if v.eu_range is not None:
            lines.append(f"range = [{v.eu_range[0]!r}, {v.eu_range[1]!r}]")
    skipped = [v for v in found if not v.usable]
    if skipped:
        lines += ["", "# not scalar numbers or booleans (not usable as tags):"]
        lines += [
            f"#   {node_string(v.node_id, namespaces)}  {'/'.join(v.path)}  "
            f"{v.data_type or '?'}{'[]' if v.value_rank >= 0 else ''}"
            for v in skipped
        ]
    return "\n".join(lines) + "\n"
