"""The wire contract as Python: generated stubs (`tropd.wire.v1`, from `proto/`) and the codec
both sides share (`tropd.wire.codec`: numpy arrays <-> the proto `Tensor`).

Light on purpose (grpc, protobuf and numpy only): the client imports it on machines without
torch. See docs/architecture.md#the-wire-contract.
"""
