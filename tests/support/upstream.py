#!/usr/bin/env python3
"""A local HTTP upstream for tests: fixed JSON, slow answers, echo.
Usage: upstream.py PORTFILE  -- binds 127.0.0.1 on a free port and writes it to PORTFILE."""
import json, sys, time, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlparse, parse_qs

class H(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        u = urlparse(self.path)
        q = parse_qs(u.query)
        if u.path == "/hello.json":
            return self.send_json(200, {"hello": "world"})
        if u.path == "/big.json":
            return self.send_json(200, {"data": "x" * 5000})
        if u.path.startswith("/slow"):
            time.sleep(float(q.get("ms", ["2000"])[0]) / 1000)
            return self.send_json(200, {"slow": True})
        if u.path.startswith("/admin") or u.path.startswith("/private"):
            return self.send_json(200, {"secret": False})
        return self.send_json(404, {"error": "not found"})

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
