/**
 * The left-sidebar panel: the jobs waiting for a human, each with Approve and Deny.
 *
 * Plain DOM in a Lumino widget: one list item per job, added and removed as the event stream
 * reports changes, so a button being reached with the keyboard is not rebuilt under the user.
 */

import { InputDialog, showErrorMessage } from '@jupyterlab/apputils';
import { LabIcon, refreshIcon } from '@jupyterlab/ui-components';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ConnectionState, IJob, JobEvents, PENDING, QGuardClient, QGuardError } from './api';
import { reviewSection } from './review';

// A shield with an atom's orbits. Stroked shapes sit in a fill="none" group so JupyterLab's
// `.jp-icon3[fill]` theme rule (which recolours any element carrying a fill) leaves them hollow.
const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g fill="none" stroke-width="1.9" stroke-linejoin="round">
    <path class="jp-icon3" stroke="#616161"
      d="M12 2.2 4.2 5.3v5.8c0 4.9 3.3 9.1 7.8 10.7 4.5-1.6 7.8-5.8 7.8-10.7V5.3z"/>
    <ellipse class="jp-icon3" stroke="#616161" cx="12" cy="11.6" rx="4.7" ry="1.9"
      transform="rotate(35 12 11.6)"/>
    <ellipse class="jp-icon3" stroke="#616161" cx="12" cy="11.6" rx="4.7" ry="1.9"
      transform="rotate(-35 12 11.6)"/>
  </g>
  <circle class="jp-icon3" fill="#616161" cx="12" cy="11.6" r="1.3"/>
</svg>`;

export const qguardIcon = new LabIcon({ name: 'jupyter-qguard:approvals', svgstr: ICON_SVG });

export const PANEL_ID = 'jupyter-qguard-approvals';
const CAPTION = 'Quantum job approvals';
const OTP = /^\d{6}$/;

export interface IApprovalsPanelOptions {
  client: QGuardClient;
  events: JobEvents;
  /** How many pending jobs to ask the server for (it caps this at 1000). */
  limit?: number;
}

export class ApprovalsPanel extends Widget {
  constructor(options: IApprovalsPanelOptions) {
    super();
    this._client = options.client;
    this._events = options.events;
    this._limit = options.limit ?? 200;

    this.id = PANEL_ID;
    this.addClass('jp-QGuard');
    this.title.icon = qguardIcon;
    // The sidebar shows the icon; the count goes on the tab as a badge (see _update).
    this.title.label = '';
    this.title.caption = CAPTION;

    const header = element('div', 'jp-QGuard-header');
    const heading = element('h2', 'jp-QGuard-heading', 'Job approvals');
    heading.id = `${PANEL_ID}-heading`;
    this._count = element('span', 'jp-QGuard-count', '0');
    // Announced when it changes, without taking the user away from what they are doing.
    this._count.setAttribute('aria-live', 'polite');
    this._connection = element('span', 'jp-QGuard-connection');
    const refresh = element('button', 'jp-QGuard-refresh');
    refresh.type = 'button';
    refresh.title = 'Refresh';
    refresh.setAttribute('aria-label', 'Refresh the pending jobs');
    refresh.append(refreshIcon.element({ tag: 'span', elementSize: 'normal' }));
    refresh.addEventListener('click', () => void this.refresh());
    this._refreshButton = refresh;
    header.append(heading, this._count, this._connection, refresh);

    this._message = element('p', 'jp-QGuard-message', 'Loading…');
    this._message.setAttribute('role', 'status');

    this._list = element('ul', 'jp-QGuard-list');
    this._list.setAttribute('role', 'list');
    this._list.setAttribute('aria-labelledby', heading.id);

    this.node.append(header, this._message, this._list);

    this._events.jobChanged.connect(this._onJobChanged, this);
    this._events.stateChanged.connect(this._onConnection, this);
    this._onConnection(this._events, this._events.state);
    void this.refresh();
  }

  /** A job newly waiting for approval, as the event stream announced it. */
  get requested(): ISignal<this, IJob> {
    return this._requested;
  }

  /** Pending jobs listed, newest first. */
  get jobs(): readonly IJob[] {
    return [...this._jobs.values()].sort(newestFirst);
  }

  get limit(): number {
    return this._limit;
  }

  set limit(value: number) {
    if (value !== this._limit) {
      this._limit = value;
      void this.refresh();
    }
  }

  /** Reads the pending jobs again; events that arrive meanwhile are applied on top. */
  async refresh(): Promise<void> {
    const generation = ++this._generation;
    this._replay = [];
    try {
      const jobs = await this._client.pendingJobs(this._limit);
      if (generation !== this._generation) {
        return; // A later refresh owns the list.
      }
      this._truncated = jobs.length >= this._limit;
      const fresh = new Map(jobs.map(job => [job.id, job]));
      for (const id of [...this._jobs.keys()]) {
        if (!fresh.has(id)) {
          this._remove(id);
        }
      }
      for (const job of jobs) {
        this._upsert(job);
      }
      // The snapshot may predate events that already arrived: they win.
      for (const job of this._replay) {
        this._apply(job);
      }
      this._loadError = '';
    } catch (err) {
      if (generation !== this._generation) {
        return;
      }
      this._loadError = `The pending jobs could not be read: ${messageOf(err)}`;
    } finally {
      if (generation === this._generation) {
        this._replay = null;
        this._update();
      }
    }
  }

  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    Signal.clearData(this);
    super.dispose();
  }

  private _onJobChanged(_: JobEvents, job: IJob): void {
    this._replay?.push(job);
    const known = this._jobs.has(job.id);
    this._apply(job);
    if (!known && job.state === PENDING) {
      this._requested.emit(job);
    }
    this._update();
  }

  private _onConnection(_: JobEvents, state: ConnectionState): void {
    const text: Record<ConnectionState, string> = {
      connecting: 'connecting…',
      open: 'live',
      closed: 'reconnecting…'
    };
    this._connection.textContent = text[state];
    this._connection.dataset.state = state;
    this._connection.title =
      state === 'open'
        ? 'Changes arrive as they happen'
        : 'The live feed is down: the list may be out of date until it reconnects';
    if (state === 'open' && this._everOpened) {
      // Whatever happened while the socket was down was not sent: read the list again.
      void this.refresh();
    }
    this._everOpened ||= state === 'open';
  }

  private _apply(job: IJob): void {
    if (job.state === PENDING) {
      this._upsert(job);
    } else {
      this._remove(job.id);
    }
  }

  private _upsert(job: IJob): void {
    const current = this._jobs.get(job.id);
    if (current && version(current) === version(job)) {
      return;
    }
    this._jobs.set(job.id, job);
    const item = this._renderJob(job);
    const old = this._items.get(job.id);
    this._items.set(job.id, item);
    if (old) {
      // Keep the keyboard where it was if the job was re-rendered under it.
      const focused = old.contains(document.activeElement)
        ? (document.activeElement as HTMLElement).dataset.action
        : undefined;
      old.replaceWith(item);
      if (focused) {
        item.querySelector<HTMLElement>(`[data-action="${focused}"]`)?.focus();
      }
      return;
    }
    // Newest first, as the server lists them.
    const next = this.jobs.find(other => other.id !== job.id && newestFirst(job, other) < 0);
    this._list.insertBefore(item, next ? (this._items.get(next.id) ?? null) : null);
  }

  private _remove(id: string): void {
    const item = this._items.get(id);
    this._jobs.delete(id);
    this._items.delete(id);
    if (!item) {
      return;
    }
    const hadFocus = item.contains(document.activeElement);
    const neighbour = (item.nextElementSibling ??
      item.previousElementSibling) as HTMLElement | null;
    item.remove();
    if (hadFocus) {
      // Do not drop the keyboard user on <body> when the job they acted on leaves.
      (neighbour?.querySelector<HTMLElement>('button') ?? this._refreshButton).focus();
    }
  }

  private _update(): void {
    const count = this._jobs.size;
    const shown = this._truncated && count >= this._limit ? `${count}+` : String(count);
    this._count.textContent = shown;
    this._count.setAttribute('aria-label', `${shown} waiting`);
    // Lumino renders the title's dataset as data-* attributes on the sidebar tab; the
    // stylesheet draws the badge from it.
    this.title.dataset = count > 0 ? { 'qguard-pending': shown } : {};

    if (this._loadError) {
      this._message.textContent = this._loadError;
      this._message.dataset.kind = 'error';
    } else if (count === 0) {
      this._message.textContent = 'No job is waiting for approval.';
      this._message.dataset.kind = 'empty';
    } else {
      this._message.textContent = '';
      delete this._message.dataset.kind;
    }
  }

  private _renderJob(job: IJob): HTMLLIElement {
    const id = short(job.id, 8);
    const item = element('li', 'jp-QGuard-job');
    item.setAttribute('role', 'listitem');
    item.dataset.jobId = job.id;
    item.setAttribute('aria-label', `Job ${id}: ${job.shots} shots on ${job.backend}`);

    const top = element('div', 'jp-QGuard-jobTop');
    top.append(
      element('span', 'jp-QGuard-backend', job.backend),
      element('span', 'jp-QGuard-shots', `${job.shots.toLocaleString()} shots`),
      element('span', 'jp-QGuard-state', job.state.replace(/_/g, ' '))
    );

    const fields = element('dl', 'jp-QGuard-fields');
    const field = (name: string, value: string | Node, full?: string): void => {
      const dd = element('dd');
      dd.append(value);
      if (full) {
        dd.title = full;
      }
      fields.append(element('dt', undefined, name), dd);
    };
    field('Job', code(id), job.id);
    field('Requested by', job.requester.user || '—');
    const notebook = job.requester.notebook;
    field('Notebook', notebook ? basename(notebook) : '—', notebook ?? undefined);
    const cell = job.requester.cell_id;
    field(
      'Cell',
      cell ? code(short(cell, 8)) : '—',
      cell ? `${cell} (as the kernel reported it)` : undefined
    );
    field('Digest', code(short(job.digest, 12)), job.digest);
    const needed = job.decision?.approvals_required ?? 1;
    if (needed > 1) {
      field('Approvals', `${job.approvals_given ?? 0} of ${needed}`);
    }
    if (typeof job.cost === 'number') {
      field('Cost', job.cost.toLocaleString());
    }
    const created = new Date(job.created_at);
    const asked = element('time', undefined, when(created));
    asked.dateTime = job.created_at;
    field('Asked', asked, created.toLocaleString());

    const actions = element('div', 'jp-QGuard-actions');
    const approve = button('Approve', `Approve job ${id}`, 'jp-QGuard-approve');
    approve.dataset.action = 'approve';
    approve.addEventListener('click', () => void this._approve(job));
    const deny = button('Deny', `Deny job ${id}`, 'jp-QGuard-deny');
    deny.dataset.action = 'deny';
    deny.addEventListener('click', () => void this._deny(job));
    actions.append(approve, deny);
    if (this._busy.has(job.id)) {
      setBusy(item, true);
    }

    item.append(top, fields, reviewSection(job, this._client), actions);
    return item;
  }

  private async _approve(job: IJob): Promise<void> {
    await this._act(job, 'Approval failed', async () => {
      try {
        return await this._client.approve(job);
      } catch (err) {
        if (!(err instanceof QGuardError && err.mfaRequired)) {
          throw err;
        }
      }
      // The policy wants a second factor for this job: ask for the code, then try again.
      const otp = await askForCode(job);
      return otp === null ? null : this._client.approve(job, otp);
    });
  }

  private async _deny(job: IJob): Promise<void> {
    const id = short(job.id, 8);
    let reason = '';
    while (!reason) {
      const result = await InputDialog.getText({
        title: `Deny job ${id}`,
        label: 'Why? The reason is recorded with the job and in the audit log.',
        placeholder: 'e.g. too many shots',
        okLabel: 'Deny',
        required: true
      });
      if (!result.button.accept) {
        return;
      }
      reason = (result.value ?? '').trim();
    }
    await this._act(job, 'Denial failed', () => this._client.deny(job, reason));
  }

  /** Runs one request for a job with its buttons disabled, and reports what went wrong. */
  private async _act(
    job: IJob,
    failure: string,
    request: () => Promise<IJob | null>
  ): Promise<void> {
    if (this._busy.has(job.id)) {
      return;
    }
    this._busy.add(job.id);
    this._setItemBusy(job.id, true);
    try {
      const updated = await request();
      if (updated) {
        this._apply(updated);
        this._update();
      }
    } catch (err) {
      await showErrorMessage(failure, messageOf(err));
      // A 404 or 409 means the job moved on without us (expired, decided elsewhere): resync.
      void this.refresh();
    } finally {
      this._busy.delete(job.id);
      this._setItemBusy(job.id, false);
    }
  }

  private _setItemBusy(id: string, busy: boolean): void {
    const item = this._items.get(id);
    if (item) {
      setBusy(item, busy);
    }
  }

  private readonly _client: QGuardClient;
  private readonly _events: JobEvents;
  private readonly _count: HTMLSpanElement;
  private readonly _connection: HTMLSpanElement;
  private readonly _refreshButton: HTMLButtonElement;
  private readonly _message: HTMLParagraphElement;
  private readonly _list: HTMLUListElement;
  private readonly _jobs = new Map<string, IJob>();
  private readonly _items = new Map<string, HTMLLIElement>();
  private readonly _busy = new Set<string>();
  private readonly _requested = new Signal<this, IJob>(this);
  private _limit: number;
  private _truncated = false;
  private _loadError = '';
  private _generation = 0;
  /** Events seen while a refresh is in flight, re-applied over its snapshot. */
  private _replay: IJob[] | null = null;
  private _everOpened = false;
}

/** Asks for the 6-digit code until one is given or the dialog is cancelled (null). */
async function askForCode(job: IJob): Promise<string | null> {
  let label =
    `Approving job ${short(job.id, 8)} needs a second factor. ` +
    'Enter the 6-digit code from your authenticator app.';
  for (;;) {
    const result = await InputDialog.getText({
      title: 'Approval code',
      label,
      placeholder: '123456',
      okLabel: 'Approve',
      pattern: '\\s*\\d{3}\\s*\\d{3}\\s*',
      required: true
    });
    if (!result.button.accept) {
      return null;
    }
    // Authenticator apps show the code as "123 456"; the server wants the digits alone.
    const code = (result.value ?? '').replace(/\s+/g, '');
    if (OTP.test(code)) {
      return code;
    }
    label = 'The code is 6 digits. Enter the one your authenticator app shows now.';
  }
}

function setBusy(item: HTMLElement, busy: boolean): void {
  item.setAttribute('aria-busy', String(busy));
  for (const b of item.querySelectorAll('button')) {
    b.disabled = busy;
  }
}

/** What tells two copies of a job apart: an approval short of the last one may not move it. */
function version(job: IJob): string {
  return `${job.updated_at}|${job.state}|${job.approvals_given ?? 0}`;
}

function newestFirst(a: IJob, b: IJob): number {
  return b.created_at.localeCompare(a.created_at) || a.id.localeCompare(b.id);
}

/** The time alone for today's requests: the sidebar is narrow. */
function when(date: Date): string {
  if (date.toDateString() === new Date().toDateString()) {
    return date.toLocaleTimeString();
  }
  return date.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function short(value: string, length: number): string {
  return value.length > length ? value.slice(0, length) : value;
}

function basename(path: string): string {
  return path.split('/').pop() || path;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function code(text: string): HTMLElement {
  return element('code', undefined, text);
}

function button(label: string, ariaLabel: string, className: string): HTMLButtonElement {
  const b = element('button', `jp-QGuard-button ${className}`, label);
  b.type = 'button';
  b.setAttribute('aria-label', ariaLabel);
  return b;
}
