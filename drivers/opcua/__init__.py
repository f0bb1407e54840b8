"""OPC UA client driver: bulk reads and data-change subscriptions over one asyncua session."""

from drivers.opcua.driver import OpcUaDriver, OpcUaTag

__all__ = ["OpcUaDriver", "OpcUaTag"]
