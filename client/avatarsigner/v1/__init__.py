"""Generated protobuf and gRPC stubs for avatarsigner.v1 (see dev/gen_protos.py)."""
