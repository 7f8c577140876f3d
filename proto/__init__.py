"""longwatch.proto: the gRPC contract (longwatch.proto) and its generated stubs.

Import the stubs as `longwatch.proto.longwatch_pb2` / `longwatch_pb2_grpc`. Nothing is imported
here, so `python -m longwatch.proto.generate` still runs when the stubs are stale or broken.
"""
