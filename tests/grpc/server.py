#!/usr/bin/python3
"""A gRPC server for the tests (Debian's python3-grpcio), no codegen: generic
handlers on raw bytes. Service demo.Demo:

  Unary(bytes) -> b"<name>:" + bytes
  Stream(bytes n) -> n messages b"<name>:<i>"
  Bidi(stream) -> each message echoed as b"<name>:" + message
  Fail(bytes) -> aborts NOT_FOUND, message "no such thing", trailer
                 x-demo-trailer: <name>
  Slow(bytes ms) -> sleeps ms milliseconds, then answers b"late"

usage: server.py --port N --name NAME [--tls CERT KEY]
Prints "listening <port>" once serving; stops on SIGTERM.
"""
import argparse
import signal
import sys
import threading
import time
from concurrent import futures

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="grpc")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    a = ap.parse_args()
    name = a.name.encode()

    def unary(req, ctx):
        return name + b":" + req

    def stream(req, ctx):
        for i in range(int(req or b"3")):
            yield name + b":" + str(i).encode()

    def bidi(reqs, ctx):
        for r in reqs:
            yield name + b":" + r

    def fail(req, ctx):
        ctx.set_trailing_metadata((("x-demo-trailer", a.name),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def slow(req, ctx):
        time.sleep(int(req or b"500") / 1000)
        return b"late"

    handler = grpc.method_handlers_generic_handler(
        "demo.Demo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers((handler,))
    addr = f"127.0.0.1:{a.port}"
    if a.tls:
        cert, key = (open(p, "rb").read() for p in a.tls)
        port = server.add_secure_port(addr, grpc.ssl_server_credentials(((key, cert),)))
    else:
        port = server.add_insecure_port(addr)
    server.start()
    print(f"listening {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(0)


if __name__ == "__main__":
    sys.exit(main())
