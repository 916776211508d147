#!/bin/sh
# Regenerate inference_pb2.py / inference_pb2_grpc.py from fedai/inference/inference.proto.
# Run from the repository root: sh fedai/inference/proto/regenerate.sh
# The proto_path mapping makes the generated code import `fedai.inference.proto.inference_pb2`.
set -eu
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc \
  --proto_path=fedai/inference/proto=fedai/inference \
  --python_out=. --grpc_python_out=. \
  fedai/inference/inference.proto
