"""Start ``matcher_node`` (or its lifecycle variant) as a child process and stop it cleanly.

One place for what the tests, ``fm-stress``, ``fm-replay``, ``fm-demo`` and ``fm-gpu-check`` all need: the
``python -m ... --ros-args`` command line, the child's output kept in files (a pipe nobody reads can fill
and block the node), SIGINT first and SIGKILL only on a timeout, and the child's resident memory. It
imports no rclpy: the node runs in its own process, and talking to it is :mod:`.client`'s job::

    with NodeProcess("front", {"backend": "sift", "device": "cpu"}) as node:
        ...                                   # a MatcherClient(node="front") talks to it
        code, seconds = node.stop()           # SIGINT; 0 is a clean exit
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from ..resources import config_file

NODE_MODULE = "feature_matcher_ros.matcher_node"
LIFECYCLE_MODULE = "feature_matcher_ros.lifecycle_matcher_node"


def ros_value(value: Any) -> str:
    """The ``VALUE`` of ``-p NAME:=VALUE`` (read as YAML by rcl) that gives back ``value``.

    Strings are written bare when YAML reads them back unchanged (``sift``, ``/path/x.ckpt``) and quoted
    when it would not (``""``, ``"1.0"``, ``"true"``), so the command line stays readable.

    >>> [ros_value(v) for v in (True, 3, 0.5, "sift", "1.0", "")]
    ['true', '3', '0.5', 'sift', '"1.0"', '""']
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value
        except yaml.YAMLError:
            same = False
        return value if same else json.dumps(value)
    return repr(value)


def node_command(name: str | None = None, params: Mapping[str, Any] | None = None,
                 params_file: str | Path | None = "default", module: str = NODE_MODULE,
                 namespace: str = "", extra_args: Sequence[str] = (), args: Sequence[str] = ()) -> list[str]:
    """The command line that starts the node, as ``ros2 run`` / ``launch_ros`` would pass it.

    Args:
        name: node name (``-r __node:=name``; None keeps the node's own), so that several never meet.
        params: ``{name: value}`` overrides (``-p name:=value``), applied after ``params_file``.
        params_file: a ROS params YAML; ``"default"`` is the shipped ``config/matcher.yaml``, None none.
        module: the entry module (:data:`LIFECYCLE_MODULE` for the lifecycle variant).
        namespace: ``-r __ns:=/namespace`` unless empty or ``/``.
        extra_args: more ``--ros-args`` arguments, e.g. ``["-r", "image:=/cam/image_raw"]``.
        args: program arguments before ``--ros-args`` (e.g. ``["--activate"]`` for the lifecycle node).

    >>> node_command("n", {"device": "cpu"}, None)[3:]
    ['--ros-args', '-r', '__node:=n', '-p', 'device:=cpu']
    """
    cmd = [sys.executable, "-m", module, *args, "--ros-args"]
    if name:
        cmd += ["-r", f"__node:={name}"]
    if namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
    if params_file == "default":
        params_file = config_file("matcher.yaml")
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for key, value in (params or {}).items():
        cmd += ["-p", f"{key}:={ros_value(value)}"]
    return cmd + list(extra_args)


class NodeProcess:
    """The node as a child process whose stdout and stderr go to files, never to a pipe.

    The first arguments are those of :func:`node_command`; or pass ``command`` (a complete command line,
    e.g. the one a launch file describes) instead. Output goes to two temporary files (read through
    :attr:`stdout` / :attr:`stderr`); with ``log_path`` both streams go to that one file (both properties
    then read it); with ``inherit_output`` they go to this process's terminal (``fm-demo``).
    ``env`` is the child's environment (default: this process's), always with ``PYTHONUNBUFFERED=1``.
    """

    def __init__(self, name: str | None = None, params: Mapping[str, Any] | None = None,
                 params_file: str | Path | None = "default", env: Mapping[str, str] | None = None,
                 module: str = NODE_MODULE, extra_args: Sequence[str] = (), args: Sequence[str] = (),
                 namespace: str = "", log_path: str | Path | None = None, inherit_output: bool = False,
                 command: Sequence[str] | None = None) -> None:
        self.name = name or "matcher_node"
        self.cmd = list(command) if command is not None else node_command(
            name, params, params_file, module, namespace, extra_args, args)
        self._out, self._err = self._output_files(log_path, inherit_output)
        child_env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.cmd, env=child_env, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err)
        self.pid = self.proc.pid

    @staticmethod
    def _output_files(log_path: str | Path | None, inherit: bool) -> tuple[IO[bytes] | None, IO[bytes] | None]:
        """``(stdout, stderr)`` targets: files the node can fill at its own pace (None = the terminal)."""
        if inherit:
            return None, None
        if log_path is not None:
            log = open(log_path, "w+b")  # noqa: SIM115 - closed in close()
            return log, log
        return tempfile.TemporaryFile(mode="w+b"), tempfile.TemporaryFile(mode="w+b")

    def rss_mb(self) -> float:
        """Resident memory of the node process in MiB (nan once it has exited)."""
        import psutil

        try:
            return psutil.Process(self.pid).memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return float("nan")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """The exit code once the node has exited, or None if it still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> tuple[int | None, float]:
        """Send ``sig`` (a clean ROS shutdown) and wait; if the node is still there after ``timeout``, SIGUSR1
        (the package's nodes write every thread's stack to their log: where it hangs) and SIGKILL.

        Returns ``(exit code, seconds it took)``; the code is None when the node had to be killed.
        """
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.wait(timeout)
        if code is None:
            self.proc.send_signal(signal.SIGUSR1)
            self.wait(2.0)
            self.proc.kill()
            self.proc.wait()
        return code, time.monotonic() - t0

    @staticmethod
    def _read(f: IO[bytes] | None) -> str:
        if f is None or f.closed:
            return ""
        f.flush()
        f.seek(0)
        return f.read().decode(errors="replace")

    @property
    def stdout(self) -> str:
        """What the node wrote to stdout so far (all of its output with ``log_path``)."""
        return self._read(self._out)

    @property
    def stderr(self) -> str:
        """What the node wrote to stderr so far (its ROS log lines; all of its output with ``log_path``)."""
        return self._read(self._err)

    def close(self) -> None:
        """Stop the node if it still runs (SIGINT, 5 s) and close its output files."""
        if self.proc.poll() is None:
            self.stop(signal.SIGINT, timeout=5.0)
        for f in {id(f): f for f in (self._out, self._err) if f is not None}.values():
            f.close()

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
