"""The Digital Original: models authored as plain Python + TOML (`spec`), run by the compiled
ensemble engine (`engine`), calibrated online (`calibrate`), or an FMU (`fmu`).

`units/` holds the authored unit models; `units/water_loop` is the built-in model of the rig's
water-circulation loop (`model.kind = "loop"`).
"""
