#!/usr/bin/env python3
"""A service manager's notification socket for tests: binds a Unix
datagram socket at argv[1] and appends every datagram it receives to the
file argv[2], each followed by a line "--". Runs until killed."""
import os
import socket
import sys

path, out = sys.argv[1], sys.argv[2]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
open(out + ".ready", "w").close()
while True:
    data = s.recv(65536)
    with open(out, "ab") as f:
        f.write(data.rstrip(b"\n") + b"\n--\n")
