"""Numeric code: the Digital Original (`models.process`) and the anomaly detector
(`models.anomaly`). NumPy in, NumPy out, no I/O after load.

`models` imports neither `edge_agent` nor `drivers`.
"""
