"""
The client parameters of a comparison run (the harness), named in its
output.  Two settings: C{standard} and C{alt}, which changes every client
parameter that could shape a throughput figure, so that a run with
C{--harness both} shows whether the figures depend on the harness.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Harness:
    """The parameters of every client of a run."""

    name: str
    # wrk: threads and connections for new connections and kept-alive requests (HTTP and HTTPS).
    wrk_threads: int
    wrk_connections: int
    # iperf3: -l (the buffer of each write); -w (socket buffer) is left to the kernel's autotuning.
    iperf3_length: str
    # wrk connections downloading the large file through TLS, and its size.
    tls_bulk_connections: int
    tls_bulk_bytes: int
    # Processes of handshakes.py (each a closed-loop client: one connection at a time).
    handshake_clients: int
    # UDP: closed-loop clients (one datagram outstanding each), the processes they are spread over, datagram size.
    udp_clients: int
    udp_processes: int
    udp_size: int

    def describe(self) -> str:
        """The parameters as one line of text."""
        return (
            f"harness {self.name}: wrk -t{self.wrk_threads} -c{self.wrk_connections}; "
            f"iperf3 -l {self.iperf3_length} -P 1|4 (-w: kernel default); "
            f"TLS bulk: wrk -c{self.tls_bulk_connections} on a {self.tls_bulk_bytes >> 20} MiB file; "
            f"handshakes: {self.handshake_clients} closed-loop client processes; "
            f"UDP: {self.udp_clients} closed-loop clients in {self.udp_processes} processes, "
            f"{self.udp_size}-byte datagrams"
        )

    def as_dict(self) -> dict[str, object]:
        """The parameters, for the JSON output."""
        return asdict(self)


STANDARD = Harness("standard", 1, 50, "128K", 1, 32 << 20, 2, 32, 2, 64)
ALT = Harness("alt", 1, 100, "32K", 2, 8 << 20, 4, 16, 2, 64)
SETTINGS = {"standard": (STANDARD,), "alt": (ALT,), "both": (STANDARD, ALT)}
