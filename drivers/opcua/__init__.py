"""OPC UA client driver: subscriptions (own publish loop, lean decoding), polling groups,
security (policies, certificates, trust list) and address-space browsing over asyncua."""

from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.tags import OpcUaGroup, OpcUaTag

__all__ = ["OpcUaDriver", "OpcUaGroup", "OpcUaTag"]
