"""tropd teacher service: batched token log-prob scoring and generation over gRPC.

The client (`teacher.client`), the wire helpers (`teacher.wire`) and the tokenizer fingerprint
(`teacher.fingerprint`) import without torch or transformers; everything else is the server.
"""

__version__ = "0.1.0"
