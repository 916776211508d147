"""Generated protobuf and gRPC stubs for fedai/inference/inference.proto."""
