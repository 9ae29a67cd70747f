"""Applications built on the engines: end-to-end runs beside `keras_apm.cli`.

An app may use every engine (`distill`, `ttt`, `data`, `models`) and
`visualize` together; the engines never import an app or `visualize`.
`digits_demo` is the offline digits run behind `keras-apm demo` and the
shipped `apm_tiny_digits` preset (`tools/distill_digits_apm.py`).
"""
