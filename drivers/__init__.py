"""Protocol clients that turn PLC traffic into `drivers.base.Sample` batches.

`drivers` imports neither `edge_agent` nor `models`: it is the wire side of the product.
"""
