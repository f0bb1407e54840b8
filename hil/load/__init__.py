"""The load rig: many plant instances behind several simulated PLCs, for throughput benchmarks.

`python -m hil.load --tags 10000 --protocol modbus --processes 2` starts it. The tag set and
timestamp encoding are in `hil.load.layout`, the plants in `hil.load.bank`, the servers in
`hil.load.servers`, one server process in `hil.load.worker`, the processes in `hil.load.rig`
and the agent configuration it writes in `hil.load.config`. The lean servers that offer more
than pymodbus' and asyncua's servers can: `hil.load.modbus_server` (pipelined Modbus reads) and
`hil.load.opcua_server` (OPC UA subscriptions from a pre-encoded template, 200k
notifications/s from one process).
"""
