"""The plant on the other side of the wire: a simulated water-circulation loop with its own
control logic, behind real OPC UA and Modbus TCP servers, with faults that can be injected
while it runs. It is the demo, the test fixture and the load generator.

`hil` never imports `edge_agent`.
"""
