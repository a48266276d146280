"""Reading TensorBoard event files in tests, without tensorboard itself."""
import pathlib


def read_scalars(path):
    """{tag: [(step, value)]} from a TensorBoard event file (TFRecord framing, no tensorboard)."""
    import struct

    from tensorboardX.proto import event_pb2
    out = {}
    data = pathlib.Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
