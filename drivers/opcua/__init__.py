"""OPC UA client driver: subscriptions (own publish loop, lean decoding), polling groups,
security (policies, certificates, trust list) and address-space browsing over asyncua.

`OpcUaDriver` is imported on first use: asyncua costs about 50 MB of memory, which a gateway
with Modbus drivers only should not pay for reading its config."""

from typing import TYPE_CHECKING, Any

from drivers.opcua.tags import OpcUaGroup, OpcUaTag

if TYPE_CHECKING:
    from drivers.opcua.driver import OpcUaDriver

__all__ = ["OpcUaDriver", "OpcUaGroup", "OpcUaTag"]


def __getattr__(name: str) -> Any:
    if name == "OpcUaDriver":
        from drivers.opcua.driver import OpcUaDriver  # noqa: PLC0415

        return OpcUaDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
