"""A real round-robin balancer (Debian's nginx) over loopback ports, for tests of several replicas
(kept from the hash ring's tests: the PostgreSQL replicas' tests put it in front of them)."""

from __future__ import annotations

from pathlib import Path

from conftest import tool
from helpers import Proc, free_port, http, wait_for


class Balancer(Proc):
    """nginx, round-robin over the given loopback ports."""

    def __init__(self, folder: Path, ports: list[int]) -> None:
        folder.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "".join(f"    server 127.0.0.1:{p};\n" for p in ports)
        temp = "".join(f"  {name}_temp_path {folder}/{name};\n"
                       for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = folder / "nginx.conf"
        conf.write_text(f"worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
                        f"events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n{temp}"
                        f"  upstream replicas {{\n{servers}  }}\n"
                        f"  server {{\n    listen 127.0.0.1:{self.port};\n"
                        f"    location / {{ proxy_pass http://replicas; proxy_next_upstream off; }}\n  }}\n}}\n")
        super().__init__([tool("nginx"), "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf),
                          "-g", "daemon off;"])
        wait_for(lambda: http("GET", f"{self.url}/-/healthy", timeout=2)[0] > 0, 10, what="nginx up")  # any answer
