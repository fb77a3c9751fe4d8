"""Reads a Perfetto protobuf trace with Perfetto's own generated classes (PyPI `perfetto`) and
prints a JSON summary: slices per category, whether every track's begins and ends pair up and
nest, thread and counter tracks. bufscope's tests compare it with what they exported."""

import json
import sys
from collections import Counter, defaultdict

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent


def main(path):
    trace = Trace()
    with open(path, "rb") as f:
        trace.ParseFromString(f.read())
    slices = Counter()
    names = Counter()
    threads, counters, named_tracks = set(), set(), {}
    depth = defaultdict(int)
    unbalanced = 0
    last_ts = 0
    out_of_order = 0
    counter_values = Counter()
    for p in trace.packet:
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            named_tracks[d.uuid] = d.name
            if d.HasField("thread"):
                threads.add(d.thread.tid)
            if d.HasField("counter"):
                counters.add(d.name)
            continue
        if not p.HasField("track_event"):
            continue
        e = p.track_event
        if p.timestamp < last_ts:
            out_of_order += 1
        last_ts = p.timestamp
        if e.type == TrackEvent.TYPE_SLICE_BEGIN:
            depth[e.track_uuid] += 1
            for c in e.categories:
                slices[c] += 1
            names[e.name.split(":")[0]] += 1
        elif e.type == TrackEvent.TYPE_SLICE_END:
            depth[e.track_uuid] -= 1
            if depth[e.track_uuid] < 0:
                unbalanced += 1
        elif e.type == TrackEvent.TYPE_COUNTER:
            counter_values[named_tracks.get(e.track_uuid, "?")] += 1
    unbalanced += sum(1 for d in depth.values() if d != 0)
    print(json.dumps({
        "packets": len(trace.packet),
        "slices": dict(slices),
        "slice_names": dict(names),
        "threads": len(threads),
        "counter_tracks": sorted(counters),
        "counter_samples": sum(counter_values.values()),
        "unbalanced_tracks": unbalanced,
        "out_of_order": out_of_order,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
