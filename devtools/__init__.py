"""Development tools shared by the tests and the benchmarks; not shipped in the Bento or the
MLflow model.

The tests may import this package and so may the benchmarks, but the benchmarks never import the
tests: code both need (such as starting and stopping a server process) lives here.
"""
