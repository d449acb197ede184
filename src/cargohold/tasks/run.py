"""``hold run`` and ``hold tasks start``: pull if needed, create, start, wait, clean up.

:func:`find_image` takes the image from the store (its name as given, or the name normalised
as a registry reference: ``busybox`` → ``docker.io/library/busybox:latest``), and otherwise
pulls it with the puller of :mod:`cargohold.fetch.pull` (``pull`` is given by the caller, who
owns the registry settings) and returns the pulled name.

:func:`run` creates container ``id`` (:func:`cargohold.tasks.containers.create`) and its
task (:func:`cargohold.tasks.launch.launch`); ``detach`` returns once it runs. Attached, the
caller's stdio and signals are forwarded (:func:`cargohold.tasks.attach.attach`) and the
exit status is returned; with ``rm`` the task and then the container (and its snapshot) are
removed after the exit. A task that cannot be created leaves no task behind, and with ``rm``
no container either. If this process dies while the task runs, the task is not affected;
what ``rm`` would have removed stays, for ``hold tasks rm`` and ``hold containers rm``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from cargohold._record import record
from cargohold.errors import CargoholdError, InvalidArgument, NotFound
from cargohold.tasks import containers
from cargohold.tasks.api import TaskPaths

if TYPE_CHECKING:
    from cargohold.client import Client
    from cargohold.tasks.launch import ShimStarter


def find_image(client: Client, ref: str, pull: Callable[[str], str] | None) -> str:
    """The name of image ``ref`` in the store, pulled first when it is missing there."""
    from cargohold.images.refs import normalize
    from cargohold.metadata import images as image_records

    full = None  # not a registry reference
    with contextlib.suppress(InvalidArgument):
        full = normalize(ref)
    names = [ref] if full in (None, ref) else [ref, full]
    with client.db.view() as tx:
        for n in names:
            with contextlib.suppress(NotFound):
                image_records.get(tx, client.namespace, n)
                return n
    if pull is None:
        raise NotFound(f"image {ref}: not found in namespace {client.namespace}",
                       hint="pull it with 'hold images pull', or list images with "
                            "'hold images ls'")
    if full is None:
        raise NotFound(f"image {ref}: not in the store, and not a reference that could be "
                       "pulled", hint="list images with 'hold images ls'")
    try:
        return pull(ref)
    except CargoholdError as exc:
        # Say why a pull was tried at all: the user may have meant an image of the store.
        exc.message = (f"image {ref}: not in namespace {client.namespace}, and pulling "
                       f"{full} failed: {exc.message}")
        exc.args = (exc.message,)
        raise


@record
class RunResult:
    """What :func:`run` did: the exit status (None when detached) and the init pid."""

    status: int | None
    pid: int = 0


def run(client: Client, image: str, cid: str, opts: containers.CreateOptions, *,
        detach: bool = False, rm: bool = False, stdin: int | None = 0, stdout: int = 1,
        stderr: int = 2, shim: ShimStarter | None = None) -> RunResult:
    """Create and start container ``cid`` of ``image`` (see the module docstring).

    ``shim``: one the caller started as early as it could (``hold run`` does, before it
    imports the rest); otherwise one is started here, before the container is created.
    """
    from cargohold.tasks.attach import attach
    from cargohold.tasks.control import Tasks
    from cargohold.tasks.launch import ShimStarter, launch

    if detach and rm:
        raise InvalidArgument("--rm and --detach: cannot be used together",
                              hint="remove a detached task with 'hold tasks rm' when it is done")
    if shim is None:
        # The shim's interpreter starts while the container is created (it waits for the
        # bundle).
        with ShimStarter() as own:
            return run(client, image, cid, opts, detach=detach, rm=rm, stdin=stdin,
                       stdout=stdout, stderr=stderr, shim=own)
    containers.create(client, image, cid, opts)
    try:
        ready = launch(client, cid, start=detach, shim=shim)
    except BaseException:
        if rm:
            with contextlib.suppress(CargoholdError):
                containers.remove(client, cid)
        raise
    pid = int(ready.get("pid") or 0)
    if detach:
        return RunResult(None, pid)
    paths = TaskPaths(client.config.state, client.namespace, cid)
    status = attach(paths, start=True, stdin=stdin, stdout=stdout, stderr=stderr,
                    close_stdin=True, tty=opts.spec.tty)
    if rm:
        def drop_container() -> None:
            # Gone already when someone else removed it meanwhile: as asked.
            with contextlib.suppress(NotFound):
                containers.remove(client, cid, task_going=True)

        tasks = Tasks.of(client.config, client.namespace)
        try:
            # The container goes while the shim deletes runc's container (both are needed
            # gone before the task's directory).
            tasks.rm(cid, meanwhile=drop_container)
        except NotFound:
            drop_container()  # 'hold tasks rm' removed the task first: the container stays ours
    return RunResult(status, pid)


def start(client: Client, cid: str, *, detach: bool = False, stdin: int | None = 0,
          stdout: int = 1, stderr: int = 2) -> int | None:
    """``hold tasks start``: start the task of container ``cid`` and, unless ``detach``,
    attach to it and return its exit status.

    A task left CREATED by a start that did not finish (its shim waiting) is started by its
    shim; otherwise the task is created first (:func:`cargohold.tasks.launch.launch`, which
    refuses a task that exists in any other state).
    """
    import os

    from cargohold.tasks import attach as att
    from cargohold.tasks.api import Status
    from cargohold.tasks.control import Tasks
    from cargohold.tasks.launch import launch, require_container

    paths = TaskPaths(client.config.state, client.namespace, cid)
    existing = None
    if os.path.isdir(paths.dir):
        existing = Tasks.of(client.config, client.namespace).get(cid)
    if existing is not None and existing.status == Status.CREATED and existing.shim_alive:
        tty = existing.tty
        if detach:
            att.start_detached(paths)
            return None
    else:
        require_container(client, cid)
        tty = bool(launch(client, cid, start=detach).get("tty"))
        if detach:
            return None
    return att.attach(paths, start=True, stdin=stdin, stdout=stdout, stderr=stderr,
                      close_stdin=True, tty=tty)
