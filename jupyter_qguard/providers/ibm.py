"""IBM Quantum through qiskit-ibm-runtime: SamplerV2's job on an IBM backend.

The token never passes through here: `credentials.ibm_service` builds the QiskitRuntimeService
from the keyring right before a submission (after approval) and the service object is dropped
once the job is handed over. IBM's API has no idempotency key, so the broker's key goes in the
job's tags: after a restart the job is found by its tag instead of being submitted again.

The program is never read here. The server fetches the backend from IBM and hands what IBM says
of it (configuration, properties) to a program worker, which transpiles the program for it and
answers with the ISA circuit already encoded as qiskit-ibm-runtime's RuntimeEncoder sends one;
the server checks that shape and passes it on, unread, in the job's inputs, built as SamplerV2
builds them.

`local_testing` runs qiskit-ibm-runtime's local testing mode (SamplerV2 on the backend's
calibration snapshot, fake_brisbane, ...) in a program worker, without a credential or the
network.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import asdict
from typing import Any

from traitlets import Bool, Int, Type, Unicode

from .. import credentials
from .base import NOT_COUNTS, Provider, ProviderError, RunSpec, checked_counts

# An ISA circuit as RuntimeEncoder writes it: base64 of zlib'd QPY. Bounded below the pool's
# answer cap; a circuit of millions of gates still fits.
MAX_ISA_CHARS = 48 << 20
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
NOT_A_CIRCUIT = "the program worker answered with something that is not an encoded ISA circuit"


def isa_circuit(answer: Any) -> dict[str, str]:
    """The worker's ISA circuit, checked to be exactly RuntimeEncoder's form of a QuantumCircuit
    and never decoded here (the worker is as untrusted as the program it read)."""
    value = answer.get("__value__") if isinstance(answer, dict) else None
    if (
        not isinstance(answer, dict)
        or set(answer) != {"__type__", "__value__"}
        or answer["__type__"] != "QuantumCircuit"
        or not isinstance(value, str)
        or not 0 < len(value) <= MAX_ISA_CHARS
        or len(value) % 4
        or not BASE64.fullmatch(value)
    ):
        raise ProviderError(NOT_A_CIRCUIT)
    return {"__type__": "QuantumCircuit", "__value__": value}


def local_counts(answer: Any, shots: int) -> dict[str, int]:
    """The counts of a local-testing run, checked: bitstrings of one length, positive ints that
    add up to the shots."""
    if not isinstance(answer, dict) or set(answer) != {"counts"}:
        raise ProviderError(NOT_COUNTS)
    return checked_counts(answer["counts"], shots)


def backend_description(backend: Any) -> dict[str, Any]:
    """What transpiling for `backend` needs, JSON-able, for ibm_worker.ibm_isa_circuit: what
    IBMBackend.target and generate_preset_pass_manager(backend=...) take from the backend. Its
    configuration and properties go as RuntimeEncoder's JSON text (their dates and complex
    numbers kept): IBM's word, decoded in the worker. Nothing the worker answers is decoded
    here."""
    from qiskit_ibm_runtime import RuntimeEncoder
    from qiskit_ibm_runtime.utils.utils import is_simulator

    properties = backend.properties()

    def plugin(name: str) -> str | None:
        get = getattr(backend, name, None)
        return None if get is None else str(get())

    return {
        "configuration": json.dumps(backend.configuration().to_dict(), cls=RuntimeEncoder),
        "properties": None
        if properties is None
        else json.dumps(properties.to_dict(), cls=RuntimeEncoder),
        "translation_method": plugin("get_translation_stage_plugin"),
        "scheduling_method": plugin("get_scheduling_stage_plugin"),
        "simulator": bool(is_simulator(backend)),
    }


def job_request(backend: Any, isa: dict[str, str], spec: RunSpec) -> dict[str, Any]:
    """The arguments SamplerV2(mode=backend).run([circuit], shots=...) hands the service's
    `_run` (BasePrimitiveV2._run, qiskit-ibm-runtime 0.51), with the worker's encoded circuit in
    the circuit's place: RuntimeEncoder writes a dict as it is, so IBM receives what SamplerV2
    would send. SamplerV2 has no public way to send a circuit it is not given as an object, so
    this uses the SDK's private option helpers and `_run`; tests/providers/test_ibm.py compares
    the result with SamplerV2's own and fails when the SDK changes."""
    from qiskit.primitives.containers.bindings_array import BindingsArray
    from qiskit_ibm_runtime import IBMBackend
    from qiskit_ibm_runtime.options import SamplerOptions

    options = SamplerOptions()
    options.environment.job_tags = [spec.idempotency_key]
    as_dict = asdict(options)
    # A pub is (circuit, parameter values, shots); the worker refuses unbound parameters, so the
    # values are those of a circuit without any.
    pub = (isa, BindingsArray().as_array([]), spec.shots)
    inputs = {"pubs": [pub], **SamplerOptions._get_program_inputs(as_dict)}
    runtime = SamplerOptions._get_runtime_options(as_dict)
    runtime["backend"] = backend
    if "instance" not in runtime and isinstance(backend, IBMBackend):
        runtime["instance"] = backend._instance
    return {
        "program_id": "sampler",
        "inputs": inputs,
        "options": runtime,
        "calibration_id": getattr(backend, "calibration_id", None),
        "dry_run": False,
    }


class IBMProvider(Provider):
    name = "ibm"

    channel = Unicode(
        "ibm_quantum_platform", config=True, help="qiskit-ibm-runtime channel of the account."
    )
    instance = Unicode(
        None, allow_none=True, config=True, help="IBM Cloud instance (CRN or name), if needed."
    )
    service_class = Type(
        None,
        allow_none=True,
        klass="builtins.object",
        config=True,
        help="Class used in place of qiskit_ibm_runtime.QiskitRuntimeService (default: it).",
    )
    local_testing = Bool(
        False,
        config=True,
        help="Run in qiskit-ibm-runtime's local testing mode, on the backend's calibration "
        "snapshot (fake_<name>), without a credential or the network.",
    )
    optimization_level = Int(1, config=True, help="Preset pass manager level before submission.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Jobs handed over by this process, by id; local-testing runs' counts live only here.
        self._jobs: dict[str, Any] = {}
        self._local: dict[str, dict[str, int]] = {}

    def _service(self) -> Any:
        return credentials.ibm_service(
            self.credentials,
            channel=self.channel,
            instance=self.instance,
            service_class=self.service_class,
        )

    def _remote_backend(self, spec: RunSpec) -> tuple[Any, Any, dict[str, Any]]:
        service = self._service()
        backend = service.backend(spec.options.get("remote_name", spec.backend))
        return service, backend, backend_description(backend)

    def _hand_over(self, service: Any, backend: Any, isa: dict[str, str], spec: RunSpec) -> str:
        job = service._run(**job_request(backend, isa, spec))
        job_id = str(job.job_id())
        self._jobs[job_id] = job
        return job_id

    async def _submit(self, spec: RunSpec) -> str:
        if self.local_testing:
            name = spec.options.get("snapshot") or spec.options.get("remote_name", spec.backend)
            answer = await self.in_worker(
                "ibm_local_run",
                spec.program_format,
                spec.payload,
                name,
                spec.shots,
                spec.seed,
                self.optimization_level,
            )
            job_id = f"local-{uuid.uuid4()}"
            self._local[job_id] = local_counts(answer, spec.shots)
            return job_id
        service, backend, description = await asyncio.to_thread(self._remote_backend, spec)
        isa = isa_circuit(
            await self.in_worker(
                "ibm_isa_circuit",
                spec.program_format,
                spec.payload,
                description,
                self.optimization_level,
            )
        )
        return await asyncio.to_thread(self._hand_over, service, backend, isa, spec)

    async def submit(self, spec: RunSpec) -> str:
        try:
            return await self._submit(spec)
        except credentials.CredentialError as exc:
            raise ProviderError(str(exc)) from None
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"IBM refused the job: {type(exc).__name__}: {exc}") from None

    def _result(self, spec: RunSpec, job_id: str) -> dict[str, Any]:
        if self.local_testing:
            counts = self._local.pop(job_id, None)
            if counts is None:
                raise ProviderError(f"local testing job {job_id} is gone with its process")
        else:
            job = self._jobs.pop(job_id, None)
            if job is None:
                job = self._service().job(job_id)
            # IBM's answer (trusted), decoded by the SDK.
            counts = job.result()[0].join_data().get_counts()
        return {
            "counts": {str(k): int(v) for k, v in counts.items()},
            "shots": spec.shots,
            "seed": spec.seed,
            "provider": {"name": "ibm", "job_id": job_id, "local_testing": self.local_testing},
        }

    async def result(self, spec: RunSpec, provider_job_id: str) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self._result, spec, provider_job_id)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"the IBM job failed: {type(exc).__name__}: {exc}") from None

    def _find_by_tag(self, key: str) -> str | None:
        found = self._service().jobs(job_tags=[key], limit=1)
        return str(found[0].job_id()) if found else None

    async def recover(self, spec: RunSpec, provider_job_id: str | None) -> dict[str, Any]:
        if provider_job_id is None:
            if self.local_testing:
                # Nothing left this machine: running it again costs nothing and runs once.
                provider_job_id = await self.submit(spec)
            else:
                provider_job_id = await asyncio.to_thread(
                    self._find_by_tag, spec.idempotency_key
                ) or await self.submit(spec)
        return await self.result(spec, provider_job_id)
