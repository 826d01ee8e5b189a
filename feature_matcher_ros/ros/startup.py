"""Start-up and tear-down shared by the node executables: bad ROS arguments and failing node
construction end in one clear line and exit code 2; SIGINT and SIGTERM end the node with exit code 0,
however many arrive and whenever.

Why signals never raise here: Ctrl-C in a terminal sends SIGINT to the whole foreground group and
``ros2 launch`` forwards one more, so a node gets two, the second while it tears down. Python's default
SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to be (inside rclpy's
``destroy_node``, inside a thread join); :func:`stop_on_signals` replaces it, before ``rclpy.init``, by one
that only notes the request. rclpy's own handlers, installed by ``rclpy.init``, chain to it: they shut the
context down, which ends the spin; after ``rclpy.shutdown`` only the note remains. The spin also ends on the
note alone (:func:`spin_until_stopped`), for when rclpy's wake-up of the executor is lost. A signal in the first
moments of the process, before the executable's ``main`` runs, is beyond any program's reach.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

_stop = threading.Event()


def _note_stop(signum: int, frame: Any) -> None:
    _stop.set()


def _ignore_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def stop_on_signals() -> None:
    """SIGINT and SIGTERM only ask the node to stop (call first, before ``rclpy.init``). Once the program
    has returned they are ignored: the interpreter's finalisation would otherwise put the default action
    (death by the signal, exit code -2) back in place of a Python handler. SIGUSR1 writes every thread's
    stack to stderr (``kill -USR1 <pid>`` on a node that does not end; ``NodeProcess.stop`` sends it before
    it kills one)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _note_stop)
    atexit.register(_ignore_signals)
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def stop_requested() -> bool:
    """Whether SIGINT or SIGTERM arrived since :func:`stop_on_signals`."""
    return _stop.is_set()


def _bad_arguments(prog: str, exc: Exception) -> None:
    print(f"[{prog}] cannot start: bad ROS arguments ({type(exc).__name__}: {exc}); see {prog} --help",
          file=sys.stderr, flush=True)


def non_ros_args(argv: list[str], prog: str) -> list[str] | None:
    """``argv`` without its ROS arguments, or None (after one line on stderr) when they do not parse."""
    from rclpy.utilities import remove_ros_args

    try:
        return remove_ros_args(argv)
    except Exception as exc:  # noqa: BLE001 - e.g. UnknownROSArgsError
        _bad_arguments(prog, exc)
        return None


def init_rclpy(argv: list[str], prog: str) -> bool:
    """``rclpy.init(args=argv)``; False (after one line on stderr) when the ROS arguments are bad. A stop
    asked for before (a signal during the imports) shuts the context down at once: the node then ends
    cleanly."""
    import rclpy

    try:
        rclpy.init(args=argv)
    except Exception as exc:  # noqa: BLE001 - e.g. UnknownROSArgsError
        _bad_arguments(prog, exc)
        return False
    if stop_requested():
        rclpy.try_shutdown()
    return True


def make_node(factory: Callable[[], Any], prog: str) -> tuple[Any, int]:
    """``(factory(), 0)`` after :func:`init_rclpy`; on failure ``(None, code)`` with rclpy shut down: 0 when a
    signal stopped the start-up, 2 with one ``cannot start`` line on stderr otherwise."""
    import rclpy

    try:
        return factory(), 0
    except Exception as exc:  # noqa: BLE001 - start-up errors end in one clear line
        rclpy.try_shutdown()
        if stop_requested():
            return None, 0
        print(f"[{prog}] cannot start: {exc}", file=sys.stderr, flush=True)
        return None, 2


#: the longest the main thread waits in one spin: a stop that rclpy's wake-up of the executor missed is seen
#: by then (the Python handler's note runs when the main thread is back in Python)
STOP_CHECK_S = 0.5


def spin_until_stopped(spin_once: Callable[[float], Any], context: Any = None,
                       done: Callable[[], bool] = lambda: False) -> None:
    """``spin_once(STOP_CHECK_S)`` (an executor's ``spin_once``, one wait of at most that many seconds) until
    SIGINT/SIGTERM: until rclpy's handler has shut the context (default: rclpy's) down, or the note of
    :func:`stop_on_signals` says a signal came, or ``done()``. Waiting in short spins rather than one
    ``executor.spin()`` matters: under load a signal's wake-up of the wait set was lost twice, and a node with
    nothing else to wake it waited forever (test_launch's slam test, once for ``matcher_node`` and once for
    ``pose_graph_node``; their stacks on SIGUSR1 showed the main thread in the executor's wait).

    rclpy raises ``ExternalShutdownException`` once the context is down, or, when the signal lands between
    the executor's check of the context and the creation of its wait set, an ``RCLError`` ("the given context
    is not valid"): both are the stop that was asked for. Anything raised while the context is valid and no
    signal came propagates."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    while rclpy.ok(context=context) and not stop_requested() and not done():
        try:
            spin_once(STOP_CHECK_S)
        except ExternalShutdownException:
            return
        except Exception:  # noqa: BLE001 - rclpy's RCLError after a shutdown; re-raised otherwise
            if rclpy.ok(context=context) and not stop_requested():
                raise
            return


def tear_down(node: Any, executor: Any) -> None:
    """Stop the node's worker (``close``), then take the node off the executor and shut rclpy down."""
    import rclpy

    node.close()
    executor.remove_node(node)
    node.destroy_node()
    rclpy.try_shutdown()


def exit_now_if_busy(node: Any, code: int) -> int:
    """``code``; but when the node's worker is still inside a slow inference (a learned backend on the CPU),
    end the process at once: waiting is pointless, and the interpreter's finalisation aborts in C++
    destructors while a thread is inside torch."""
    if node.busy:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
