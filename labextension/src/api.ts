/**
 * The server's side of the panel: the REST routes under qguard/api/ and the job event stream.
 *
 * Shapes follow jupyter_qguard/broker/store.py (`_job_dict`) and handlers.py; README.md,
 * "REST API and events", is the reference.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

/** Where a job came from. The broker fills it from the kernel channel, never from the request. */
export interface IRequester {
  user: string;
  /** "agent" when an agent token drove the kernel (the server authenticated it). */
  kind?: 'user' | 'agent';
  /** The agent's name, from its token. */
  agent?: string | null;
  kernel_id?: string | null;
  notebook?: string | null;
  /** The kernel's own word, for orientation only. */
  cell_id?: string | null;
}

/** A job as the REST API and the event stream give it (the fields the panel reads). */
export interface IJob {
  id: string;
  state: string;
  created_at: string;
  updated_at: string;
  requester: IRequester;
  backend: string;
  shots: number;
  cost?: number | null;
  /** What an approval is bound to: approving sends it back, and a changed job fails it. */
  digest: string;
  reason?: string | null;
  approvals_given?: number;
  /** The policy's decision and what fed it (lint, cost, the preflight run). */
  decision?: IDecision | null;
  /**
   * Whether approving needs a TOTP code, and why: the policy's step-up MFA, or an in-server
   * agent extension enabled in the server (QGuardApp.inprocess_agents = require_mfa).
   */
  mfa?: IMfa;
  /**
   * Team mode (under JupyterHub): the team broker's page where this job is approved or denied,
   * absolute or root-relative. This server then refuses approve and deny (409).
   */
  approve_url?: string;
  /** Team mode: the job is in the team's shared queue. */
  team?: boolean;
}

/** What the broker says an approval of the job needs beyond its digest (broker `with_mfa`). */
export interface IMfa {
  required: boolean;
  /** Sentences a person can read, shown by the code field. */
  reasons: string[];
}

export interface IFinding {
  severity: string;
  code: string;
  message: string;
}

export interface IDecision {
  approvals_required?: number;
  mfa_required?: boolean;
  allow?: boolean;
  deny?: string[];
  notes?: string[];
  lint?: { findings?: IFinding[] };
  cost?: { estimate?: number; currency?: string };
  preflight?: { counts?: Record<string, number>; shots?: number; skipped?: string };
}

/** What an approver reads beyond the job (GET jobs/{id}/review). */
export interface IReview {
  /** Text the kernel sent beside the program: its own description, never checked. */
  source?: string | null;
  source_origin?: string;
  source_verified?: boolean;
  source_note?: string;
  format: string;
  /** The circuit as it will run: transpiled for `drawing_target` (null: as sent). */
  drawing?: string | null;
  drawing_target?: string | null;
  drawing_note?: string | null;
  files: {
    path: string;
    change: { actor: string; diff?: { lines?: string[]; unavailable?: string } } | null;
  }[];
  budget: {
    daily?: number | null;
    spent_today: number;
    left?: number | null;
    this_job?: number | null;
    currency: string;
  };
}

/** GET jobs/{id}: the job with its moves and approvals. */
export interface IJobDetail extends IJob {
  events: { at: string; from: string | null; to: string; actor: string }[];
  approvals: { approver: string; at: string }[];
  provider_job_id?: string | null;
  result?: { counts?: Record<string, number> } | null;
}

/** The history's filters; empty values are not sent. */
export interface IJobFilter {
  states?: string[];
  backend?: string;
  /** The requester, as the broker recorded it. */
  user?: string;
  /** Only jobs created before this time (the last row's created_at): the next page. */
  before?: string;
  limit: number;
}

/** One sandbox layer as the kernel's launcher applied it, before any agent code ran. */
export interface ILayer {
  active?: boolean;
  why?: string;
}

/** An agent kernel the broker runs (GET sandbox). */
export interface IKernelReport {
  kernel_id: string;
  connected: boolean;
  sandbox: {
    ok?: boolean;
    active?: string[];
    applied?: Record<string, ILayer>;
    /** Why the kernel's previous launch ended, when it died on its own (out of memory...). */
    last_end?: { reason: string; at?: number } | null;
  };
}

export const PENDING = 'pending_approval';

/** "bot (agent of ada)" or "ada": who asked, as the panel and its notifications say it. */
export function requesterLabel(requester: IRequester): string {
  const user = requester.user || 'unknown';
  return requester.kind === 'agent' && requester.agent
    ? `${requester.agent} (agent of ${user})`
    : user;
}

/** Every state a job can be in (jupyter_qguard/broker/jobs.py), in the order it moves. */
export const STATES = [
  'received',
  'rejected',
  'pending_approval',
  'approved',
  'denied',
  'expired',
  'voided',
  'cancelled',
  'queued',
  'submitted',
  'completed',
  'failed'
];

/** A refused request, with the server's own explanation. */
export class QGuardError extends Error {
  constructor(
    message: string,
    readonly status: number,
    /** The HTTP reason the server chose, e.g. "mfa_required" for a 403 that wants a code. */
    readonly reason: string
  ) {
    super(message);
    this.name = 'QGuardError';
  }

  get mfaRequired(): boolean {
    return this.status === 403 && this.reason === 'mfa_required';
  }
}

/** The REST routes. */
export class QGuardClient {
  constructor(
    readonly serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  /** Pending jobs, newest first; the server caps `limit` at 1000. */
  async pendingJobs(limit: number): Promise<IJob[]> {
    const query = URLExt.objectToQueryString({ state: PENDING, limit: String(limit) });
    const reply = await this._request<{ jobs: IJob[] }>(`jobs${query}`, { method: 'GET' });
    return reply.jobs;
  }

  /** Jobs in any state, newest first, for the history. */
  async jobs(filter: IJobFilter): Promise<IJob[]> {
    const params: Record<string, string> = { limit: String(filter.limit) };
    if (filter.states?.length) {
      params.state = filter.states.join(',');
    }
    for (const key of ['backend', 'user', 'before'] as const) {
      const value = filter[key]?.trim();
      if (value) {
        params[key] = value;
      }
    }
    const query = URLExt.objectToQueryString(params);
    const reply = await this._request<{ jobs: IJob[] }>(`jobs${query}`, { method: 'GET' });
    return reply.jobs;
  }

  job(id: string): Promise<IJobDetail> {
    return this._request<IJobDetail>(`jobs/${encodeURIComponent(id)}`, { method: 'GET' });
  }

  /** Does the server run this kernel as a qguard agent kernel? (Not its kernelspec's say.) */
  async isAgentKernel(kernelId: string): Promise<boolean> {
    const reply = await this._request<{ agent: boolean }>(
      `kernels/${encodeURIComponent(kernelId)}`,
      { method: 'GET' }
    );
    return reply.agent === true;
  }

  /** The agent kernels the broker runs, with the sandbox layers each one has. */
  async kernels(): Promise<IKernelReport[]> {
    const reply = await this._request<{ kernels: IKernelReport[] }>('sandbox', { method: 'GET' });
    return reply.kernels;
  }

  /** `otp` only where the policy asked for a second factor (a 403 "mfa_required" first). */
  approve(job: IJob, otp?: string): Promise<IJob> {
    const body: { digest: string; otp?: string } = { digest: job.digest };
    if (otp !== undefined) {
      body.otp = otp;
    }
    return this._post(`jobs/${encodeURIComponent(job.id)}/approve`, body);
  }

  review(job: IJob): Promise<IReview> {
    return this._request<IReview>(`jobs/${encodeURIComponent(job.id)}/review`, { method: 'GET' });
  }

  deny(job: IJob, reason: string): Promise<IJob> {
    return this._post(`jobs/${encodeURIComponent(job.id)}/deny`, { reason });
  }

  private _post(path: string, body: object): Promise<IJob> {
    return this._request<IJob>(path, { method: 'POST', body: JSON.stringify(body) });
  }

  private async _request<T>(path: string, init: RequestInit): Promise<T> {
    const url = URLExt.join(this.serverSettings.baseUrl, 'qguard/api', path);
    // makeRequest adds the token or XSRF header; a NetworkError here means no reply at all.
    const response = await ServerConnection.makeRequest(url, init, this.serverSettings);
    const text = await response.text();
    let data: unknown = undefined;
    try {
      data = text ? JSON.parse(text) : undefined;
    } catch {
      // Not JSON (a proxy's error page, say): reported below by status.
    }
    if (!response.ok) {
      // jupyter_server's APIHandler answers errors as {"message": ..., "reason": ...}.
      const reply = (data ?? {}) as { message?: unknown; reason?: unknown };
      const message =
        typeof reply.message === 'string' && reply.message
          ? reply.message
          : `${response.status} ${response.statusText}`.trim();
      const reason = typeof reply.reason === 'string' ? reply.reason : response.statusText;
      throw new QGuardError(message, response.status, reason);
    }
    return data as T;
  }
}

/**
 * Something the server raised for a person to see at once: an agent kernel writing a file the
 * person's tools run, a kernel stopped at its write budget, a disk the audit log lives on
 * filling, a possible secret in the workspace, a requester past the burst limit, ...
 */
export interface IAlert {
  kind: string;
  message: string;
  /** "stop" when the server stopped something (a kernel) because of it. */
  level?: string;
  kernel?: string;
}

/** The event stream's connection, as the panel shows it. */
export type ConnectionState = 'connecting' | 'open' | 'closed';

const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;

/**
 * The websocket qguard/api/events, reopened with exponential backoff whenever it closes.
 *
 * Events sent while the socket was down are lost, so listeners should read the job list again
 * each time `stateChanged` reports 'open'.
 */
export class JobEvents implements IDisposable {
  constructor(
    readonly serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {
    this._connect();
  }

  /** A job changed (any state). */
  get jobChanged(): ISignal<this, IJob> {
    return this._jobChanged;
  }

  /** An alert the server raised (see IAlert). */
  get alertRaised(): ISignal<this, IAlert> {
    return this._alertRaised;
  }

  get stateChanged(): ISignal<this, ConnectionState> {
    return this._stateChanged;
  }

  get state(): ConnectionState {
    return this._state;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    window.clearTimeout(this._retryTimer);
    if (this._socket) {
      this._socket.onclose = null;
      this._socket.close();
      this._socket = null;
    }
    Signal.clearData(this);
  }

  private _connect(): void {
    const settings = this.serverSettings;
    let url = URLExt.join(settings.wsUrl, 'qguard/api/events');
    // Same rule as the kernel sockets of @jupyterlab/services: the token travels in the URL only
    // where the cookie cannot (another host, or a page configured so).
    if (settings.appendToken && settings.token) {
      url += `?token=${encodeURIComponent(settings.token)}`;
    }
    this._setState('connecting');
    const socket = new settings.WebSocket(url);
    this._socket = socket;
    socket.onopen = () => {
      this._delay = FIRST_RETRY_MS;
      this._setState('open');
    };
    socket.onmessage = (msg: MessageEvent) => this._onMessage(msg);
    // An error is always followed by a close, which is where the retry is planned.
    socket.onclose = () => {
      this._socket = null;
      this._setState('closed');
      this._scheduleReconnect();
    };
  }

  private _scheduleReconnect(): void {
    if (this._disposed) {
      return;
    }
    // Jitter keeps many tabs from reconnecting in step after a server restart.
    const wait = this._delay * (0.75 + Math.random() * 0.5);
    this._delay = Math.min(this._delay * 2, LAST_RETRY_MS);
    this._retryTimer = window.setTimeout(() => this._connect(), wait);
  }

  private _onMessage(msg: MessageEvent): void {
    if (typeof msg.data !== 'string') {
      return;
    }
    let event: unknown;
    try {
      event = JSON.parse(msg.data);
    } catch {
      console.warn('jupyter-qguard: an event that is not JSON was ignored');
      return;
    }
    // "approval" is one approval recorded on a job that needs more. The stream also carries
    // workspace changes and audit news, which are not this panel's business.
    if (isJobEvent(event)) {
      this._jobChanged.emit(event.job);
    } else if (isAlert(event)) {
      this._alertRaised.emit(event);
    }
  }

  private _setState(state: ConnectionState): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _socket: WebSocket | null = null;
  private _state: ConnectionState = 'closed';
  private _delay = FIRST_RETRY_MS;
  private _retryTimer = 0;
  private _disposed = false;
  private _jobChanged = new Signal<this, IJob>(this);
  private _stateChanged = new Signal<this, ConnectionState>(this);
  private _alertRaised = new Signal<this, IAlert>(this);
}

function isAlert(value: unknown): value is IAlert & { type: 'alert' } {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return v.type === 'alert' && typeof v.kind === 'string' && typeof v.message === 'string';
}

function isJobEvent(value: unknown): value is { type: 'job' | 'approval'; job: IJob } {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const { type, job } = value as { type?: unknown; job?: unknown };
  return (
    (type === 'job' || type === 'approval') &&
    typeof job === 'object' &&
    job !== null &&
    typeof (job as { id?: unknown }).id === 'string' &&
    typeof (job as { state?: unknown }).state === 'string'
  );
}
