"""Amazon Braket through amazon-braket-sdk and qiskit-braket-provider (the `braket` extra).

The AWS keys never pass through here: `credentials.braket_session` builds an AwsSession from the
keyring right before each submission (after approval) and whenever a task is read, and the
session is dropped afterwards. Backends name their device by `options.device_arn`.

Idempotency. Braket's CreateQuantumTask takes a `clientToken` (required, 1-64 characters,
marked `idempotencyToken` in botocore's service model: botocore fills in a random one when the
caller gives none, which is what the SDK does, as neither `AwsDevice.run` nor
`AwsQuantumTask.create` has a parameter for it). The broker's idempotency key is put there with
a botocore event handler on the session's client, and also in the task's tags. Recovery after a
crash relies on the tag only: SearchQuantumTasks cannot filter by tag (its filters are
quantumTaskArn, deviceArn, jobArn, status and createdAt), but each task summary it returns holds
the task's tags, so the device's tasks are searched and matched here. When no task carries the
key the job fails instead of being submitted again, so a task never runs twice on hardware that
is paid for.

The program is never read here. A program worker loads it, converts it with
qiskit-braket-provider for the device (whose capabilities the server gets from AWS and hands
over) and answers with plain data: the Braket OpenQASM 3 source, which the server submits as a
`braket.ir.openqasm.Program`, and which classical bits it measures.

Counts. Braket writes a bitstring's first character for the first measured bit; Qiskit's keys
are little-endian (classical bit 0 rightmost). `to_braket` measures in classical-bit order, so
position p of a Braket bitstring is the p-th measured classical bit (the worker says which they
are); keys are rebuilt from that, in Qiskit's form (one character per classical bit, unmeasured
bits 0, no spaces).

`local_testing` runs the same conversion, and the SDK's LocalSimulator ("braket_dm"), in a
program worker, without a credential or the network.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Mapping
from typing import Any

from traitlets import Bool, Float, Unicode

from .. import credentials
from .base import NOT_COUNTS, Provider, ProviderError, RunSpec, checked_counts
from .braket_worker import LOCAL_SIMULATOR

IDEMPOTENCY_TAG = "qguard-idempotency-key"
INSTALL_HINT = (
    "the braket provider needs the optional packages amazon-braket-sdk and "
    "qiskit-braket-provider: pip install 'jupyter_qguard[braket]'"
)
# A task in any other state (CREATED, QUEUED, RUNNING, CANCELLING) may still change.
FINISHED = {"COMPLETED", "FAILED", "CANCELLED"}
# Braket's own cap on a task's OpenQASM source is far below this.
MAX_SOURCE_CHARS = 16 << 20
NOT_A_PROGRAM = "the program worker answered with something that is not a Braket program"
NOT_A_LAYOUT = "the program worker answered with something that is not the circuit's measured bits"


class BraketProvider(Provider):
    """Runs approved circuits as Amazon Braket quantum tasks."""

    name = "braket"

    region = Unicode(
        "us-east-1",
        config=True,
        help="AWS region for devices whose ARN names none (the on-demand simulators SV1, DM1, "
        "TN1). A device ARN that names a region (the QPUs) is used in that region.",
    )
    s3_bucket = Unicode(
        "",
        config=True,
        help="S3 bucket Braket writes task results to (Braket requires one: a name starting "
        "with 'amazon-braket-', in the device's region). A backend's options.s3_bucket "
        "overrides it. Not needed with local_testing.",
    )
    s3_prefix = Unicode(
        "jupyter-qguard/tasks",
        config=True,
        help="Key prefix for task results in s3_bucket. A backend's options.s3_prefix "
        "overrides it.",
    )
    local_testing = Bool(
        False,
        config=True,
        help="Run on the Braket SDK's local density-matrix simulator (LocalSimulator"
        f"('{LOCAL_SIMULATOR}')) instead of Amazon Braket, without a credential or the network.",
    )
    poll_interval = Float(
        5.0, config=True, help="Seconds between status checks of a submitted Braket task."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Local-testing runs (their counts and layout) by id: they live only in this process.
        self._local: dict[str, dict[str, Any]] = {}

    # -- configuration ----------------------------------------------------------------------

    def _device_arn(self, spec: RunSpec) -> str:
        arn = spec.options.get("device_arn")
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            raise ProviderError(
                f"backend '{spec.backend}' has no Braket device: set options.device_arn in its "
                "configuration (e.g. arn:aws:braket:::device/quantum-simulator/amazon/sv1)"
            )
        return arn

    def _destination(self, spec: RunSpec) -> tuple[str, str]:
        bucket = spec.options.get("s3_bucket") or self.s3_bucket
        prefix = spec.options.get("s3_prefix") or self.s3_prefix
        if not bucket:
            raise ProviderError(
                "Amazon Braket needs an S3 bucket for results: set BraketProvider.s3_bucket "
                f"(or options.s3_bucket of backend '{spec.backend}')"
            )
        return str(bucket), str(prefix).strip("/") or "jupyter-qguard"

    def _session(self, arn: str) -> Any:
        """A fresh AwsSession in the ARN's region (a device's or a task's), else `region`."""
        parts = arn.split(":")
        region = parts[3] if len(parts) > 3 and parts[3] else self.region
        return credentials.braket_session(self.credentials, region=region)

    def _device(self, arn: str) -> Any:
        from braket.aws import AwsDevice

        # GetDevice: its properties say which gates to compile to, and AwsDevice settles on the
        # device's region (for ARNs that name none, by looking); its session is the one to use.
        return AwsDevice(arn, aws_session=self._session(arn))

    # -- submission -------------------------------------------------------------------------

    async def _submit_local(self, spec: RunSpec) -> str:
        answer = await self.in_worker(
            "braket_local_run", spec.program_format, spec.payload, spec.shots
        )
        run = local_run(answer, spec.shots)
        # The run is over (the worker ran LocalSimulator to the end): its counts wait here.
        task_id = str(uuid.uuid4())
        self._local[task_id] = run
        return task_id

    async def _submit_aws(self, spec: RunSpec) -> str:
        arn = self._device_arn(spec)
        bucket, prefix = self._destination(spec)
        device = await asyncio.to_thread(self._device, arn)
        program = braket_program(
            await self.in_worker(
                "braket_program", spec.program_format, spec.payload, describe(device)
            )
        )
        destination = (arn, bucket, prefix)
        return await asyncio.to_thread(self._create, spec, device, destination, program["source"])

    def _create(
        self, spec: RunSpec, device: Any, destination: tuple[str, str, str], source: str
    ) -> str:
        from botocore.exceptions import HTTPClientError
        from braket.aws import AwsQuantumTask, AwsSession
        from braket.ir.openqasm import Program

        arn, bucket, prefix = destination
        session = device.aws_session
        session.braket_client.meta.events.register(
            "provide-client-params.braket.CreateQuantumTask",
            functools.partial(_put_client_token, spec.idempotency_key),
        )
        try:
            task = AwsQuantumTask.create(
                session,
                arn,
                Program(source=source),
                AwsSession.S3DestinationFolder(bucket, prefix),
                spec.shots,
                tags={IDEMPOTENCY_TAG: spec.idempotency_key},
                quiet=True,
            )
        except HTTPClientError as exc:
            # The request went out and no answer came back (botocore has already retried, with
            # the same clientToken): the task may exist. Look for it, so that the job is not
            # failed, and then resubmitted by a person, while its task runs.
            found = _find_by_tag(session, arn, spec.idempotency_key)
            if found is not None:
                return found
            raise ProviderError(
                f"no answer from Amazon Braket creating the task ({exc}), and no task tagged "
                f"{IDEMPOTENCY_TAG}={spec.idempotency_key} is listed on {arn} yet: check the "
                "Braket console before submitting this job again"
            ) from None
        return str(task.id)

    async def submit(self, spec: RunSpec) -> str:
        try:
            if self.local_testing:
                return await self._submit_local(spec)
            return await self._submit_aws(spec)
        except Exception as exc:
            raise _provider_error("the Braket task could not be submitted", exc) from None

    # -- results ----------------------------------------------------------------------------

    async def result(self, spec: RunSpec, provider_job_id: str) -> dict[str, Any]:
        try:
            if self.local_testing:
                return self._local_result(spec, provider_job_id)
            return await self._aws_result(spec, provider_job_id)
        except Exception as exc:
            what = (
                f"the local Braket simulation {provider_job_id} failed"
                if self.local_testing
                else f"could not follow the Braket task {provider_job_id}, which may still run "
                "(see the Braket console)"
            )
            raise _provider_error(what, exc) from None

    def _local_result(self, spec: RunSpec, task_id: str) -> dict[str, Any]:
        run = self._local.pop(task_id, None)
        if run is None:
            raise ProviderError(f"local testing task {task_id} is gone with its process")
        return self._finished(spec, task_id, run["measurement_counts"], run)

    async def _aws_result(self, spec: RunSpec, task_arn: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        task: Any = None
        while True:
            try:
                if task is None:
                    task = await asyncio.to_thread(self._aws_task, task_arn)
                metadata = await asyncio.to_thread(task.metadata)
            except (BotoCoreError, ClientError):
                if task is None:
                    raise
                # botocore has retried what is worth retrying; what is left is most often an
                # expired session token. Once more with a session built from the keyring now,
                # which may hold a renewed credential.
                task = await asyncio.to_thread(self._aws_task, task_arn)
                metadata = await asyncio.to_thread(task.metadata)
            status = metadata.get("status")
            if status in FINISHED:
                break
            await asyncio.sleep(self.poll_interval)
        if status == "FAILED":
            raise ProviderError(
                f"the Braket task {task_arn} failed: "
                f"{metadata.get('failureReason') or 'Braket gave no reason'}"
            )
        if status == "CANCELLED":
            raise ProviderError(f"the Braket task {task_arn} was cancelled")
        result = await asyncio.to_thread(task.result)
        # Which bits the counts are of, from the program: read again in a worker (nothing of
        # the submission outlives a restart but the task's ARN).
        bits = layout(
            await self.in_worker("braket_layout", spec.program_format, spec.payload),
            NOT_A_LAYOUT,
        )
        return self._finished(spec, task_arn, result.measurement_counts, bits)

    def _aws_task(self, task_arn: str) -> Any:
        from braket.aws import AwsQuantumTask

        return AwsQuantumTask(task_arn, aws_session=self._session(task_arn), quiet=True)

    def _finished(
        self, spec: RunSpec, task_id: str, counts: Mapping[str, int], bits: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "counts": qiskit_counts(counts, bits["num_clbits"], bits["measured_clbits"]),
            "shots": spec.shots,
            # Braket's devices and its local simulator take no seed: the counts are not
            # reproducible, and saying a seed was used would claim they were.
            "seed": None,
            "provider": {"name": "braket", "job_id": task_id, "local_testing": self.local_testing},
        }

    # -- recovery ---------------------------------------------------------------------------

    def _lookup(self, spec: RunSpec) -> str:
        arn = self._device_arn(spec)
        found = _find_by_tag(self._device(arn).aws_session, arn, spec.idempotency_key)
        if found is None:
            raise ProviderError(
                "the broker stopped while handing this job to Amazon Braket, and no task tagged "
                f"{IDEMPOTENCY_TAG}={spec.idempotency_key} exists on {arn}; it was not submitted "
                "again, so that it cannot run twice: submit it again if the Braket console shows "
                "no such task"
            )
        return found

    async def recover(self, spec: RunSpec, provider_job_id: str | None) -> dict[str, Any]:
        if self.local_testing:
            if provider_job_id not in self._local:
                # Nothing left this machine: running it again costs nothing and runs once.
                provider_job_id = await self.submit(spec)
            return await self.result(spec, provider_job_id)
        if provider_job_id is None:
            try:
                provider_job_id = await asyncio.to_thread(self._lookup, spec)
            except Exception as exc:
                raise _provider_error("looking the Braket task up failed", exc) from None
        return await self.result(spec, provider_job_id)


# -- helpers (module level: tests and the broker's tools use them without a provider) --------


def describe(device: Any) -> dict[str, Any]:
    """What converting a circuit for `device` (an AwsDevice: AWS's word, trusted) needs, as
    braket_worker.braket_program takes it."""
    from braket.aws import AwsDeviceType
    from braket.device_schema import DeviceActionType

    if device.properties.action.get(DeviceActionType.OPENQASM) is None:
        raise ProviderError(f"{device.name} does not run gate-model circuits (OpenQASM)")
    return {
        "name": str(device.name),
        "qpu": device.type == AwsDeviceType.QPU,
        "capabilities": device.properties.json(),
    }


def layout(answer: Any, message: str) -> dict[str, Any]:
    """{"num_clbits", "measured_clbits"} of a worker's answer, checked (ProviderError(message)
    otherwise): measured bits distinct, ascending, among the circuit's."""
    num = answer.get("num_clbits") if isinstance(answer, dict) else None
    clbits = answer.get("measured_clbits") if isinstance(answer, dict) else None
    if (
        type(num) is not int
        or not isinstance(clbits, list)
        or not clbits
        or not all(type(c) is int for c in clbits)
        or clbits != sorted(set(clbits))
        or clbits[0] < 0
        or clbits[-1] >= num
    ):
        raise ProviderError(message)
    return {"num_clbits": num, "measured_clbits": list(clbits)}


def braket_program(answer: Any) -> dict[str, Any]:
    """A worker's braket_program answer, checked: an OpenQASM 3 source and its layout."""
    source = answer.get("source") if isinstance(answer, dict) else None
    if (
        not isinstance(answer, dict)
        or set(answer) != {"source", "num_clbits", "measured_clbits"}
        or not isinstance(source, str)
        or not 0 < len(source) <= MAX_SOURCE_CHARS
        or not source.startswith("OPENQASM 3")
    ):
        raise ProviderError(NOT_A_PROGRAM)
    return {"source": source, **layout(answer, NOT_A_PROGRAM)}


def local_run(answer: Any, shots: int) -> dict[str, Any]:
    """A worker's braket_local_run answer, checked: Braket's counts (one character per measured
    bit, positive ints adding up to the shots) and their layout."""
    if not isinstance(answer, dict) or set(answer) != {
        "measurement_counts",
        "num_clbits",
        "measured_clbits",
    }:
        raise ProviderError(NOT_COUNTS)
    bits = layout(answer, NOT_COUNTS)
    counts = checked_counts(answer["measurement_counts"], shots, len(bits["measured_clbits"]))
    return {"measurement_counts": counts, **bits}


def qiskit_counts(
    braket_counts: Mapping[str, int], num_clbits: int, clbits: list[int]
) -> dict[str, int]:
    """Braket counts (character p = the p-th of `clbits`) as Qiskit counts keys (character
    num_clbits - 1 - c = classical bit c; bits nothing measured into are 0)."""
    counts: dict[str, int] = {}
    for key, n in braket_counts.items():
        if len(key) != len(clbits):
            raise ProviderError(
                f"Braket returned {len(key)}-bit results for a circuit measuring {len(clbits)} "
                "classical bits"
            )
        bits = ["0"] * num_clbits
        for clbit, bit in zip(clbits, key, strict=True):
            bits[num_clbits - 1 - clbit] = bit
        qiskit_key = "".join(bits)
        counts[qiskit_key] = counts.get(qiskit_key, 0) + int(n)
    return counts


def _put_client_token(key: str, params: dict[str, Any], **_: Any) -> None:
    # botocore's `provide-client-params` event: runs before it would fill in a random token.
    params["clientToken"] = key


def _find_by_tag(session: Any, device_arn: str, key: str) -> str | None:
    """The ARN of the task on `device_arn` tagged with the broker's key, if there is one."""
    paginator = session.braket_client.get_paginator("search_quantum_tasks")
    pages = paginator.paginate(
        filters=[{"name": "deviceArn", "operator": "EQUAL", "values": [device_arn]}]
    )
    for page in pages:
        for summary in page.get("quantumTasks", []):
            if (summary.get("tags") or {}).get(IDEMPOTENCY_TAG) == key:
                return str(summary["quantumTaskArn"])
    return None


def _provider_error(what: str, exc: Exception) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, credentials.CredentialError):
        return ProviderError(str(exc))
    if isinstance(exc, ImportError):
        return ProviderError(f"{INSTALL_HINT} ({exc})")
    # botocore's ClientError reads "An error occurred (Code) when calling the Op operation: ...".
    return ProviderError(f"{what}: {type(exc).__name__}: {exc}")
