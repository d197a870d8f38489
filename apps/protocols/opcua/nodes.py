"""Parsing and checking of OPC UA node ids as points store them ('ns=2;s=Boiler1.SupplyTemp')."""

from asyncua import ua

MAX_NAMESPACE_INDEX = 0xFFFF
MAX_NUMERIC_IDENTIFIER = 0xFFFFFFFF


def parse_node_id(text):
    """Return the ua.NodeId of ``text``; raise ValueError naming the fault when it is not a valid node id.

    The forms are those of OPC UA Part 6 section 5.3.1.10: i= (numeric), s= (string), g= (GUID)
    and b= (base64 byte string), each with an optional 'ns=<index>;' before it.
    """
    try:
        node_id = ua.NodeId.from_string(text)
    except ua.UaError as exc:
        raise ValueError(
            f"Node id {text!r} is invalid; use e.g. 'ns=2;s=Boiler1.SupplyTemp' or 'ns=3;i=1001'."
        ) from exc
    if not 0 <= node_id.NamespaceIndex <= MAX_NAMESPACE_INDEX:
        raise ValueError(f"Node id {text!r} has namespace index {node_id.NamespaceIndex}; use 0 to 65535.")
    if node_id.NodeIdType in (ua.NodeIdType.Numeric, ua.NodeIdType.TwoByte, ua.NodeIdType.FourByte) and not (
        0 <= node_id.Identifier <= MAX_NUMERIC_IDENTIFIER
    ):
        raise ValueError(f"Node id {text!r} has numeric identifier {node_id.Identifier}; use 0 to 4294967295.")
    if node_id.NodeIdType == ua.NodeIdType.String and not node_id.Identifier:
        raise ValueError(f"Node id {text!r} has an empty string identifier; put the name after 's='.")
    return node_id


def validate_node_id(text):
    parse_node_id(text)
