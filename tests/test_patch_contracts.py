"""Contracts with the third-party internals we replace or rely on: each test fails loudly when an
upgrade renames, moves or reshapes one, before a silent change reaches a mail host.

- dkimpy (milter/dkimpy_fast.py): four module globals replaced by `install()` at the milter's
  start, and the places dkimpy looks each one up.
- pymilter (milter/daemon._register): what Milter.runmilter sets up before serving, which
  _register repeats without serving.
- RQ (jobs/worker.py): the registries, keys and Worker method the worker's start-up recovery
  and JsonJobWorker use, which are not RQ's documented API.
- pyspf (milter/spf_check.py): the module-level DNSLookup our budgeted look-up replaces.

pyproject.toml bounds each package below its next minor release; raise a bound only after
these pass with the new version. Pure introspection: no stack, no network.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
from collections.abc import Callable
from datetime import UTC
from typing import Any

import pytest


def _functions(module: types.ModuleType) -> dict[str, types.FunctionType]:
    """Every function and method defined in `module`, by qualified name."""
    found: dict[str, types.FunctionType] = {}
    for name, value in vars(module).items():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            found[name] = value
        elif isinstance(value, type) and value.__module__ == module.__name__:
            for attribute, member in vars(value).items():
                if isinstance(member, types.FunctionType):
                    found[f"{name}.{attribute}"] = member
    return found


def _looked_up_by(module: types.ModuleType, name: str) -> set[str]:
    """The functions of `module` that read the global `name` at call time (so a replacement
    of module.name reaches them)."""
    return {
        qualified
        for qualified, function in _functions(module).items()
        if name in function.__code__.co_names
    }


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# -- dkimpy ------------------------------------------------------------------------------------


def test_dkimpy_rsa_verify_is_the_global_dkimpy_calls() -> None:
    import dkim
    import dkim.crypto

    from orderflow_ingest.milter import dkimpy_fast

    assert _parameters(dkimpy_fast._original_verify) == ["hash", "signature", "public_key"]
    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify in (
        dkimpy_fast._original_verify,
        dkimpy_fast.rsassa_pkcs1_v1_5_verify,
    )
    # dkim imports the name into its own namespace and verifies through that global.
    assert "DomainSigner.verify_sig_process" in _looked_up_by(dkim, "RSASSA_PKCS1_v1_5_verify")


def test_dkimpy_int2str_and_str2int_are_the_globals_its_rsa_code_calls() -> None:
    import dkim.crypto

    from orderflow_ingest.milter import dkimpy_fast

    assert _parameters(dkimpy_fast._original_int2str) == ["n", "length"]
    assert inspect.signature(dkimpy_fast._original_int2str).parameters["length"].default == -1
    assert _parameters(dkimpy_fast._original_str2int) == ["s"]
    # dkimpy's own RSA code reads both globals at call time (the original verify, which
    # install() replaces in turn, among them: it stays the fallback of the fast one).
    assert "rsa_encrypt" in _looked_up_by(dkim.crypto, "int2str")
    assert "rsa_encrypt" in _looked_up_by(dkim.crypto, "str2int")
    assert "int2str" in dkimpy_fast._original_verify.__code__.co_names
    # Same answers, so replacing them can never change a verdict.
    for n, length in ((0, -1), (1, -1), (65537, -1), (2**2047 + 5, 256), (7, 4)):
        assert dkimpy_fast.int2str(n, length) == dkimpy_fast._original_int2str(n, length)
        data = bytes(dkimpy_fast._original_int2str(n, length))
        assert dkimpy_fast.str2int(data) == dkimpy_fast._original_str2int(data)


def test_dkimpy_evaluate_pk_is_the_global_its_key_lookup_calls() -> None:
    import dkim

    from orderflow_ingest.milter import dkimpy_fast

    assert _parameters(dkimpy_fast._original_evaluate_pk) == ["name", "s"]
    assert "load_pk_from_dns" in _looked_up_by(dkim, "evaluate_pk")
    record = b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    parsed = dkimpy_fast._original_evaluate_pk(b"s._domainkey.x.test.", record)
    assert isinstance(parsed, tuple) and parsed[2] == b"ed25519"  # (key, key type, ktag)


def test_dkimpy_fast_installs_only_when_asked() -> None:
    """Importing the milter's modules changes nothing; install() (the milter's start) does."""
    import subprocess
    import sys

    script = textwrap.dedent(
        """
        import dkim, dkim.crypto
        before = (dkim.evaluate_pk, dkim.crypto.int2str, dkim.RSASSA_PKCS1_v1_5_verify)
        from orderflow_ingest.milter import daemon, dkim_check, dkimpy_fast, handler
        assert (dkim.evaluate_pk, dkim.crypto.int2str, dkim.RSASSA_PKCS1_v1_5_verify) == before
        assert not dkimpy_fast.installed()
        dkimpy_fast.install()
        dkimpy_fast.install()
        assert dkimpy_fast.installed()
        assert dkim.crypto.RSASSA_PKCS1_v1_5_verify is dkimpy_fast.rsassa_pkcs1_v1_5_verify
        assert dkim.crypto.str2int is dkimpy_fast.str2int
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# -- pymilter ----------------------------------------------------------------------------------


def _milter_calls(function: Callable[..., Any]) -> dict[str, list[str]]:
    """`set_*` and `register` calls on the libmilter module in `function`, with keywords."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    calls: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("milter", "libmilter")
            and (node.func.attr.startswith("set_") or node.func.attr == "register")
        ):
            calls[node.func.attr] = sorted(k.arg for k in node.keywords if k.arg)
    return calls


def test_register_sets_up_every_callback_runmilter_does() -> None:
    """_register is Milter.runmilter without its serving half; a callback a new pymilter adds
    there must be added to _register too, or libmilter would never call it."""
    import Milter
    import milter

    from orderflow_ingest.milter.daemon import _register

    theirs, ours = _milter_calls(Milter.runmilter), _milter_calls(_register)
    assert set(theirs) <= set(ours), f"runmilter sets up {set(theirs) - set(ours)} too"
    assert theirs["register"] == ours["register"] == ["data", "negotiate", "unknown"]
    for name in ours:
        assert callable(getattr(milter, name)), name
    # The module-level callbacks _register hands to libmilter, as runmilter does.
    assert _parameters(Milter.connect_callback)[:4] == ["ctx", "hostname", "family", "hostaddr"]
    assert _parameters(Milter.close_callback) == ["ctx"]
    assert _parameters(Milter.negotiate_callback)[0] == "ctx"
    for method in ("hello", "envfrom_bytes", "envrcpt_bytes", "header_bytes", "eoh", "body"):
        assert callable(getattr(Milter.Base, method)), method
    for method in ("eom", "abort", "data", "unknown", "close"):
        assert callable(getattr(Milter.Base, method)), method
    assert Milter.ADDHDRS and Milter.CHGHDRS and Milter.TEMPFAIL is not None


# -- RQ ----------------------------------------------------------------------------------------


def test_rq_started_registry_holds_composite_keys_of_executions() -> None:
    """recover_abandoned reads StartedJobRegistry's sorted set itself: `job_id:execution_id`."""
    from redis import Redis
    from rq.executions import Execution
    from rq.registry import StartedJobRegistry
    from rq.utils import parse_composite_key

    assert _parameters(Execution.fetch) == ["id", "job_id", "connection"]
    execution = Execution(id="exec1", job_id="job1", connection=Redis())
    assert parse_composite_key(execution.composite_key) == ("job1", "exec1")
    assert isinstance(execution.key, str) and "exec1" in execution.key
    assert "worker_name" in inspect.signature(Execution.__init__).parameters or hasattr(
        execution, "worker_name"
    )
    add = inspect.getsource(StartedJobRegistry.add_execution)
    assert "composite_key" in add and "self.key" in add
    registry = StartedJobRegistry("q", connection=Redis())
    assert registry.key == "rq:wip:q"
    assert _parameters(StartedJobRegistry.__contains__) == ["self", "item"]


def test_rq_intermediate_queue_and_worker_lookup() -> None:
    from redis import Redis
    from rq import Queue, Worker
    from rq.intermediate_queue import IntermediateQueue

    queue = Queue("q", connection=Redis())
    intermediate = IntermediateQueue(queue.key, connection=Redis())
    assert intermediate.key == queue.key + ":intermediate"
    assert _parameters(IntermediateQueue.get_job_ids) == ["self"]
    assert Worker.redis_worker_namespace_prefix == "rq:worker:"
    assert _parameters(Worker.find_by_key)[:2] == ["worker_key", "connection"]


def test_rq_scheduler_lock_names_its_holder_whose_hash_has_host_and_pid() -> None:
    """release_dead_scheduler_lock reads the lock's value as the scheduler's name, and that
    scheduler's hash for its hostname and pid."""
    from datetime import datetime

    from redis import Redis
    from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler

    scheduler = RQScheduler(["q"], connection=Redis())
    assert scheduler.key == SCHEDULER_KEY_TEMPLATE % scheduler.name
    assert RQScheduler.get_locking_key("q") == "rq:scheduler-lock:q"
    scheduler.last_heartbeat = datetime.now(UTC)
    assert {"hostname", "pid"} <= set(scheduler.to_dict())
    # acquire_locks stores the scheduler's own name under the locking key.
    tree = ast.parse(textwrap.dedent(inspect.getsource(RQScheduler.acquire_locks)))
    stores_name = [
        call
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and any(ast.unparse(arg) == "self.name" for arg in call.args)
        and any("get_locking_key" in ast.unparse(arg) for arg in call.args)
    ]
    assert stores_name, "RQScheduler.acquire_locks no longer stores self.name at the lock key"


def test_rq_worker_execute_job_is_what_jsonjobworker_overrides() -> None:
    from rq import Worker
    from rq.job import Job

    from orderflow_ingest.jobs.worker import JsonJobWorker

    assert _parameters(Worker.execute_job) == ["self", "job", "queue"]
    assert _parameters(JsonJobWorker.execute_job) == ["self", "job", "queue"]
    # The forked horse inherits job.retries_left = None: the attribute RQ's retry reads.
    assert "retries_left" in inspect.getsource(Job)


# -- pyspf -------------------------------------------------------------------------------------


def test_pyspf_looks_up_dns_through_its_module_global() -> None:
    import spf

    from orderflow_ingest.milter import spf_check

    assert _parameters(spf_check._original_lookup)[:2] == ["name", "qtype"]
    assert "query.dns" in _looked_up_by(spf, "DNSLookup")
    assert hasattr(spf, "TempError") and issubclass(spf.TempError, Exception)


def test_pyspf_lookup_is_replaced_only_at_start() -> None:
    """Importing spf_check leaves pyspf alone; install() (the milter's start) routes it."""
    import subprocess
    import sys

    script = textwrap.dedent(
        """
        import spf
        before = spf.DNSLookup
        from orderflow_ingest.milter import daemon, handler, spf_check
        assert spf.DNSLookup is before
        spf_check.install()
        spf_check.install()
        assert spf.DNSLookup is spf_check._budgeted_lookup
        assert spf_check._original_lookup is before
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("package", "bound"),
    [("dkimpy", "<1.2"), ("pymilter", "<1.1"), ("rq", "<3.1"), ("pyspf", "<2.1")],
)
def test_patched_packages_have_an_upper_bound(package: str, bound: str) -> None:
    """An upgrade past what these contracts were checked against is a deliberate step."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    spec = next(d for d in project["project"]["dependencies"] if d.split(">")[0] == package)
    assert bound in spec, spec
