"""One process per node (disco_jax.launch): the launcher, the link check, faults.

Every test starts real OS processes that meet over jax's distributed runtime
on 127.0.0.1 (CPU collectives over gloo), so each runs in a subprocess of its
own, from the repository root.
"""

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from disco_jax import launch
from disco_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _launch(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disco_jax.launch", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_exchange_over_the_runtime():
    done = _launch("--nodes", "2", "--", "disco_jax.linkcheck", "--repeats", "3")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[node 0] 2 nodes, 2 process(es), cpu" in done.stdout
    assert re.search(r"\[node 0\] +4,194,304 B per node +[\d.]+ ms", done.stdout)


@pytest.mark.slow
def test_a_killed_node_stops_the_rest_with_a_clear_error_within_60_s():
    proc = subprocess.Popen(
        [sys.executable, "-m", "disco_jax.launch", "--nodes", "2", "--", "disco_jax.linkcheck",
         "--repeats", "1", "--sizes", "65536", "--seconds", "300"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, pids = [], None
    for line in proc.stdout:  # wait until the nodes are exchanging
        lines.append(line)
        if line.startswith("disco_jax.launch:") and "pids" in line:
            pids = [int(p) for p in line.split("pids")[1].split()]
        if "exchanges" in line:
            break
    assert pids is not None and len(pids) == 2, "".join(lines)
    killed = time.monotonic()
    subprocess.run(["kill", "-KILL", str(pids[1])], check=True)
    rest = proc.communicate(timeout=90)[0]
    seconds = time.monotonic() - killed
    output = "".join(lines) + rest
    assert proc.returncode == 1
    assert seconds < 60, f"the rest took {seconds:.0f} s to stop"
    assert "[node 0] node 0: error: a collective with another node failed" in output
    assert "disco_jax.launch: node 1 was killed by SIGKILL; then node 0 stopped" in output


@pytest.mark.slow
def test_a_node_that_cannot_reach_the_coordinator_gives_up_with_a_clear_error():
    address = f"127.0.0.1:{launch._free_port()}"  # nobody listens there
    began = time.monotonic()
    done = _launch("--nodes", "2", "--coordinator", address, "--process-id", "1",
                   "--connect-timeout", "3", "--", "disco_jax.linkcheck", timeout=60)
    assert done.returncode == 2
    assert time.monotonic() - began < 30
    assert f"node 1: error: not every one of the 2 nodes joined the run at {address}" in done.stderr


def test_a_failing_module_is_named_with_its_node():
    done = _launch("--nodes", "2", "--", "no_such_module_here")
    assert done.returncode == 1
    assert "No module named no_such_module_here" in done.stdout
    assert re.search(r"disco_jax.launch: node [01] exited with code 1", done.stderr)


def _listening(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


@pytest.mark.slow
def test_the_coordinator_listens_on_the_given_address_only_and_shrugs_off_garbage():
    """Node 0 binds the coordinator to 127.0.0.1 (not every interface), and a stray
    connection that sends garbage to its port neither crashes nor hangs the run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "disco_jax.launch", "--nodes", "2", "--", "disco_jax.linkcheck",
         "--repeats", "3", "--seconds", "8"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        port = int(re.search(r"coordinator 127\.0\.0\.1:(\d+)", first).group(1))
        deadline = time.monotonic() + 60
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, v4 or v6
        assert _listening(port) and set(_listening(port)) <= loopback  # not 0.0.0.0 or [::]
        for garbage in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 40):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as stray:
                stray.sendall(garbage)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # and one that lingers
        output, _ = proc.communicate(timeout=120)
        idle.close()
    finally:
        proc.kill()
    assert proc.returncode == 0, first + output[-3000:]
    assert re.search(r"soak: \d+ exchanges in [\d.]+ s", output)


@pytest.mark.parametrize("argv,message", [
    (["--nodes", "2"], "give the module to run after --"),
    (["--nodes", "0", "--", "m"], "--nodes must be a positive number"),
    (["--nodes", "2", "--coordinator", "h:1", "--", "m"], "--coordinator and --process-id go"),
    (["--nodes", "2", "--coordinator", "h:1", "--process-id", "2", "--", "m"],
     "--process-id must be in 0 .. 1"),
    (["--nodes", "2", "--cpus", "0,x", "--", "m"], "--cpus takes comma-separated"),
    (["--nodes", "2", "--barrier-timeout", "0", "--", "m"], "--barrier-timeout must be positive"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        launch.parse_args(argv)
    assert message in capsys.readouterr().err


def test_one_cpu_per_node():
    with pytest.raises(ConfigError, match="give one per node"):
        launch.launch_local(2, "m", [], cpus=[0])


def test_the_exit_status_says_how_a_node_ended():
    assert launch._describe(-signal.SIGKILL) == "was killed by SIGKILL"
    assert "lost its link" in launch._describe(launch.LINK_FAILURE)
    assert launch._describe(1) == "exited with code 1"
