"""IBM Quantum through qiskit-ibm-runtime: SamplerV2 on an IBM backend.

The token never passes through here: `credentials.ibm_service` builds the QiskitRuntimeService
from the keyring right before a submission (after approval) and the service object is dropped
once the job is handed over. IBM's API has no idempotency key, so the broker's key goes in the
job's tags: after a restart the job is found by its tag instead of being submitted again.

`local_testing` runs the same SDK calls in qiskit-ibm-runtime's local testing mode, on the
calibration snapshot of the backend (fake_brisbane, ...), without a credential or the network.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

from traitlets import Bool, Int, Type, Unicode

from .. import credentials
from . import aer_worker
from .base import Provider, ProviderError, RunSpec


def _sampler(mode: Any) -> Any:
    with warnings.catch_warnings():
        # SamplerV2 is deprecated in favour of the client-side executor Sampler (0.50), which
        # does not yet run in local testing mode; it stays supported for months.
        warnings.simplefilter("ignore", DeprecationWarning)
        from qiskit_ibm_runtime import SamplerV2

        return SamplerV2(mode=mode)


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
        # Jobs handed over by this process, by id: local-testing jobs live only here.
        self._jobs: dict[str, Any] = {}

    def _service(self) -> Any:
        return credentials.ibm_service(
            self.credentials,
            channel=self.channel,
            instance=self.instance,
            service_class=self.service_class,
        )

    def _backend(self, spec: RunSpec) -> tuple[Any, Any]:
        """(service or None, backend) for a run."""
        name = spec.options.get("remote_name", spec.backend)
        if self.local_testing:
            return None, aer_worker.snapshot(spec.options.get("snapshot") or name)
        service = self._service()
        return service, service.backend(name)

    def _submit(self, spec: RunSpec) -> str:
        from qiskit.transpiler import generate_preset_pass_manager

        circuit = aer_worker.load_circuit(spec.program_format, spec.payload)
        service, backend = self._backend(spec)
        isa = generate_preset_pass_manager(
            backend=backend, optimization_level=self.optimization_level, seed_transpiler=0
        ).run(circuit)
        sampler = _sampler(backend)
        if service is not None:
            sampler.options.environment.job_tags = [spec.idempotency_key]
        if spec.seed is not None and self.local_testing:
            sampler.options.simulator.seed_simulator = spec.seed
        job = sampler.run([isa], shots=spec.shots)
        job_id = str(job.job_id())
        self._jobs[job_id] = job
        return job_id

    async def submit(self, spec: RunSpec) -> str:
        try:
            return await asyncio.to_thread(self._submit, spec)
        except credentials.CredentialError as exc:
            raise ProviderError(str(exc)) from None
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"IBM refused the job: {type(exc).__name__}: {exc}") from None

    def _result(self, spec: RunSpec, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            if self.local_testing:
                raise ProviderError(f"local testing job {job_id} is gone with its process")
            job = self._service().job(job_id)
        try:
            pub = job.result()[0]
        finally:
            self._jobs.pop(job_id, None)
        counts = pub.join_data().get_counts()
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
