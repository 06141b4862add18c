#!/usr/bin/python3
"""A gRPC load client for the tests: THREADS threads call demo.Demo (see
server.py) in a loop through TARGET with :authority AUTHORITY until stdin
closes (or, given ROUNDS, for that many rounds each), then print one JSON
summary line.

Each round: Unary, Stream (3 messages), Bidi (3 messages), Fail (must end
NOT_FOUND with its message and the x-demo-trailer trailer) and, every 10th
round, Slow with a 100 ms deadline on a 400 ms call (must end
DEADLINE_EXCEEDED). A call that ends otherwise is a failure, recorded with
its status and details.

usage: client.py TARGET AUTHORITY THREADS [ROUNDS]
"""
import json
import sys
import threading

import grpc


def main():
    target, authority, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    stop = threading.Event()
    lock = threading.Lock()
    stats = {"ok": 0, "failed": 0, "deadline_exceeded": 0, "not_found": 0,
             "trailers": 0, "servers": {}, "errors": []}

    def fail(what, e):
        with lock:
            stats["failed"] += 1
            if len(stats["errors"]) < 20:
                detail = f"{e.code()} {e.details()}" if isinstance(e, grpc.RpcError) else repr(e)
                stats["errors"].append(f"{what}: {detail}")

    def worker():
        ch = grpc.insecure_channel(target, options=(("grpc.default_authority", authority),))
        unary = ch.unary_unary("/demo.Demo/Unary")
        stream = ch.unary_stream("/demo.Demo/Stream")
        bidi = ch.stream_stream("/demo.Demo/Bidi")
        failing = ch.unary_unary("/demo.Demo/Fail")
        slow = ch.unary_unary("/demo.Demo/Slow")
        n = 0
        while not stop.is_set() and not (rounds and n >= rounds):
            n += 1
            try:
                r = unary(b"hi", timeout=5)
                server, _, rest = r.partition(b":")
                assert rest == b"hi", r
                msgs = list(stream(b"3", timeout=5))
                assert [m.partition(b":")[2] for m in msgs] == [b"0", b"1", b"2"], msgs
                out = list(bidi(iter([b"a", b"b", b"c"]), timeout=5))
                assert [m.partition(b":")[2] for m in out] == [b"a", b"b", b"c"], out
                with lock:
                    stats["ok"] += 3
                    s = server.decode()
                    stats["servers"][s] = stats["servers"].get(s, 0) + 1
            except Exception as e:  # noqa: BLE001
                fail("unary/stream/bidi", e)
                continue
            try:
                failing(b"x", timeout=5)
                fail("Fail", Exception("answered OK"))
            except grpc.RpcError as e:
                trailer = dict(e.trailing_metadata() or ()).get("x-demo-trailer")
                if e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing" and trailer:
                    with lock:
                        stats["not_found"] += 1
                        stats["trailers"] += 1
                else:
                    fail("Fail", e)
            if n % 10 == 0:
                try:
                    slow(b"400", timeout=0.1)
                    fail("Slow", Exception("answered before its deadline"))
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        with lock:
                            stats["deadline_exceeded"] += 1
                    else:
                        fail("Slow", e)
        ch.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    print("running", flush=True)
    if not rounds:
        sys.stdin.read()
        stop.set()
    for t in ts:
        t.join()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
