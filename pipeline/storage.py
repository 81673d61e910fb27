"""Files by URL, wherever they live: local paths, s3:// on AWS or an S3-compatible server (MinIO,
Ceph, moto), or any other fsspec URL. Every part of the project reads and writes through here.

    opts = endpoint_options("http://minio:9000")      # {} for AWS and local paths
    if exists("s3://bucket/store/manifest.json", opts):
        manifest = read_json("s3://bucket/store/manifest.json", opts)
    write_json({"a": 1}, "s3://bucket/x.json", opts)  # appears whole or not at all
    fs, path = arrow_filesystem("s3://bucket/runs", opts)  # the same files, for Ray Train and Ray Data

The options are fsspec's (s3fs's for s3://); an endpoint is the only one the project sets itself.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

TMP_MARK = ".tmp-"  # in the name of a local file being written; such files are never part of a store


def endpoint_options(endpoint: str | None) -> dict:
    """Storage options for an S3-compatible server at ``endpoint`` (none: AWS or local)."""
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def with_connections(url: str, options: dict | None, n: int) -> dict:
    """``options`` with room for ``n`` requests at once when ``url`` is on S3 (s3fs keeps 10): for
    reading many small files in parallel threads."""
    options = options or {}
    if not url.startswith("s3://"):
        return options
    return {**options, "config_kwargs": {**options.get("config_kwargs", {}), "max_pool_connections": n}}


def filesystem(url: str, options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(the filesystem that holds ``url``, the path of ``url`` on it). fsspec shares one client per
    set of options in a process, with its listings cached; other processes (Ray Train's workers,
    another job) write here too, so what this process listed of ``url``'s folders is dropped."""
    fs, path = fsspec.core.url_to_fs(url, **(options or {}))
    fs.invalidate_cache(path)
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for this machine's own disk, where files can be renamed and read by path."""
    return isinstance(fs, LocalFileSystem)


def absolute(url: str | None) -> str | None:
    """A local path made absolute (``~`` expanded), a URL as it is: Ray's workers run in other
    folders than the driver, so a relative path would name another place there."""
    return url if url is None or "://" in url else os.path.abspath(os.path.expanduser(url))


def is_node_local(url: str) -> bool:
    """True for a path only this machine may see: no scheme, ``file://`` or ``sqlite://``."""
    scheme = url.partition("://")[0] if "://" in url else ""
    return scheme in ("", "file") or url.startswith("sqlite:")


def arrow_filesystem(url: str, options: dict | None = None):  # -> (pyarrow.fs.FileSystem, str)
    """The pyarrow view of ``url``'s filesystem and its path there, for Ray Train's ``storage_filesystem``
    and Ray Data's readers: the same client and endpoint as every other read here."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(url, options)
    return PyFileSystem(FSSpecHandler(fs)), path


@contextlib.contextmanager
def naming(url: str) -> Iterator[None]:
    """An OSError in the block that names no file names ``url``: s3fs's PermissionError("Forbidden")
    and a full disk under a library's writes say nothing of where, and a user must know."""
    try:
        yield
    except OSError as e:
        code = errno.EACCES if e.errno is None and isinstance(e, PermissionError) else e.errno  # s3fs's has none
        if e.filename or code is None or type(e).__module__ != "builtins":  # another library's: its own form
            raise
        raise type(e)(code, e.strerror or str(e), url) from e


def names_its_url(f: Callable) -> Callable:
    """``f(url, ...)`` whose errors name ``url`` (``naming``)."""
    @functools.wraps(f)
    def named(url: str, *args, **kwargs):
        with naming(url):
            return f(url, *args, **kwargs)
    return named


@names_its_url
def exists(url: str, options: dict | None = None) -> bool:
    fs, path = filesystem(url, options)
    return fs.exists(path)


@names_its_url
def size(url: str, options: dict | None = None) -> int:
    fs, path = filesystem(url, options)
    return fs.size(path)


@names_its_url
def listing(url: str, options: dict | None = None) -> list[str]:
    """The names directly under the folder ``url``; empty where there is no such folder."""
    fs, path = filesystem(url, options)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


@names_its_url
def read_bytes(url: str, options: dict | None = None) -> bytes:
    fs, path = filesystem(url, options)
    with fs.open(path, "rb") as f:
        return f.read()


@names_its_url
def open_ranged(url: str, options: dict | None = None) -> IO[bytes]:
    """``url`` opened for reads of a few ranges: an object store is read in exactly the ranges asked
    for (fsspec's default read-ahead would fetch megabytes beyond each one)."""
    fs, path = filesystem(url, options)
    return fs.open(path, "rb", cache_type="none")


def read_json(url: str, options: dict | None = None) -> dict | None:
    """The JSON object at ``url``, or None where there is no such file."""
    try:
        return json.loads(read_bytes(url, options))
    except FileNotFoundError:
        return None


@names_its_url
def read_table(url: str, options: dict | None = None, columns: Sequence[str] | None = None,
               filters: list | None = None) -> pa.Table:
    fs, path = filesystem(url, options)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=list(columns) if columns else None, filters=filters)


@names_its_url
def atomic_write(url: str, write: Callable[[IO[bytes]], None], options: dict | None = None) -> int:
    """Call ``write(file)`` so that ``url`` appears whole or not at all; returns its size in bytes.

    Local files are written under a temporary name and renamed; object stores publish an object
    only once its upload completes."""
    fs, path = filesystem(url, options)
    local = is_local(fs)
    if local:  # an object store has no folders, and s3fs would create a missing bucket
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    target = f"{path}{TMP_MARK}{uuid.uuid4().hex}" if local else path
    try:
        with fs.open(target, "wb") as f:
            write(f)
        if local:
            os.replace(target, path)  # atomic on one file system
    finally:
        if local and os.path.exists(target):
            os.remove(target)
    return fs.size(path)


def write_json(data: dict, url: str, options: dict | None = None) -> int:
    text = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    return atomic_write(url, lambda f: f.write(text), options)


def storage_problem(e: BaseException) -> str | None:
    """What a storage failure means and what to do, in one line; None for any other error. Looks
    through the chain of causes, and into the errors Ray's tasks raise (``.cause``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        # Ray's errors (a task's, Ray Train's workers'): the error raised in another process, whose
        # causes do not survive the trip; its traceback, in the message, does.
        trace = str(e) if type(e).__module__.startswith("ray.") else ""
        for code, text in reversed(re.findall(r"\[Errno (\d+)\] ([^\n]*)", trace)):
            if int(code) in (errno.ENOSPC, errno.EACCES, errno.ESTALE):
                return storage_problem(OSError(int(code), *re.fullmatch(r"(.*?)(?:: '(.*)')?", text).groups()))
            if int(code) == errno.ENOENT:  # every input was checked before Ray started: it went since
                return (f"{text.split('. Detail:')[0]}: a file the run reads was removed or moved while it ran (the "
                        "store, or a checkpoint); put it back (or prepare the store again), then run the same "
                        "command: a training run resumes from its latest checkpoint")
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            e = cause
            continue
        name = type(e).__name__
        response = getattr(e, "response", None)  # botocore's errors: the service's answer
        error = response.get("Error", {}) if isinstance(response, dict) else {}
        if error.get("Code") == "NoSuchBucket":
            return (f"the S3 bucket {error.get('BucketName', '')!r} does not exist: check its name, or create it "
                    "(`aws s3 mb s3://NAME`); nothing creates a bucket by itself")
        # S3 names its errors, but for a HEAD request, whose answer has no body: a bare HTTP status to
        # any other request is another kind of server.
        if str(error.get("Code", "")).isdigit() and not getattr(e, "operation_name", "").startswith("Head"):
            return (f"the S3 endpoint answered HTTP {error['Code']} ({error.get('Message', '')}), not as an S3 server "
                    "does: check the endpoint (--s3-endpoint, data.s3_endpoint, COST_S3_ENDPOINT)")
        if name == "NoCredentialsError":
            return ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or "
                    "give the machine an instance role)")
        if name in ("EndpointConnectionError", "ConnectTimeoutError"):
            where = getattr(e, "kwargs", {}).get("endpoint_url", "the S3 endpoint")
            return (f"cannot reach {where}: check the endpoint (--s3-endpoint, data.s3_endpoint, "
                    "COST_S3_ENDPOINT) and the network")
        if isinstance(e, PermissionError):
            return (f"permission denied: {e.filename or str(e).splitlines()[0]}: give this user (or these AWS "
                    "credentials) access, or choose another path")
        if isinstance(e, OSError) and e.errno == errno.ESTALE:  # pipeline.store.StoreChanged
            return (f"{e.strerror}: a run reads one store from start to end; train a new run (another name=) on "
                    "the store as it is now, or put the store back as it was and run the same command")
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return (f"no space left on the device{f' writing {e.filename}' if e.filename else ''}: free space or "
                    "choose another place, then run the same command again (what is written whole is kept)")
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def storage_failures(prog: str, verbose: bool) -> Iterator[None]:
    """A storage failure in the block (``storage_problem``) as one line, ``prog: ...``, exit status 1;
    with ``verbose``, the traceback as it was."""
    try:
        yield
    except Exception as e:
        problem = None if verbose else storage_problem(e)
        if problem is None:
            raise
        raise SystemExit(f"{prog}: {problem}") from None

