"""The vitrine.v1 protobuf classes for the Python servers in bench/ (peer_server.py,
stub_server.py): generated at start by protoc from proto/vitrine/v1/storefront.proto into a
temporary directory, as tests/server/conftest.py does, so nothing generated is committed."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    """-> the storefront_pb2 module."""
    gen = tempfile.mkdtemp(prefix="vt-pb-")
    atexit.register(shutil.rmtree, gen, True)
    subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out", gen,
                    "vitrine/v1/storefront.proto"], check=True)
    sys.path.insert(0, gen)
    from vitrine.v1 import storefront_pb2
    return storefront_pb2
