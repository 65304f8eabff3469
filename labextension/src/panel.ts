/**
 * The left-sidebar panel: the jobs waiting for a human, each with Approve and Deny.
 *
 * In team mode (under JupyterHub) jobs are decided on the team broker's page, not here: a job
 * that carries `approve_url` gets a link to that page instead of the two buttons.
 *
 * Plain DOM in a Lumino widget: one list item per job, added and removed as the event stream
 * reports changes, so a button being reached with the keyboard is not rebuilt under the user.
 */

import { InputDialog, showErrorMessage } from '@jupyterlab/apputils';
import { LabIcon, refreshIcon } from '@jupyterlab/ui-components';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import {
  ConnectionState,
  IJob,
  JobEvents,
  PENDING,
  QGuardClient,
  QGuardError,
  requesterLabel
} from './api';
import {
  approveLink,
  basename,
  button,
  code,
  element,
  fieldList,
  messageOf,
  short,
  stateLabel,
  timeElement
} from './dom';
import { HistoryView } from './history';
import { ISessions, KernelsView } from './kernels';
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
const TEAM_CAPTION = 'Team queue: requests from everyone you approve for';
const OTP = /^\d{6}$/;

export interface IApprovalsPanelOptions {
  client: QGuardClient;
  events: JobEvents;
  /** How many pending jobs to ask the server for (it caps this at 1000). */
  limit?: number;
  /** JupyterLab's sessions: names each agent kernel by its notebook in the Kernels tab. */
  sessions?: ISessions | null;
}

type TabName = 'pending' | 'history' | 'kernels';
const TABS: { name: TabName; label: string }[] = [
  { name: 'pending', label: 'Pending' },
  { name: 'history', label: 'History' },
  { name: 'kernels', label: 'Kernels' }
];
/** How often the Kernels tab, while shown, reads the kernels again. */
const KERNELS_EVERY_MS = 5000;

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

    // Shown once the server lists a team job (team mode): whose requests these are.
    this._teamCaption = element('p', 'jp-QGuard-teamCaption', TEAM_CAPTION);
    this._teamCaption.id = `${PANEL_ID}-team`;
    this._teamCaption.hidden = true;

    this._list = element('ul', 'jp-QGuard-list');
    this._list.setAttribute('role', 'list');
    this._list.setAttribute('aria-labelledby', heading.id);

    this._history = new HistoryView(this._client, this._events);
    this._kernels = new KernelsView(this._client, options.sessions ?? null);
    const pending = element('div', 'jp-QGuard-pending');
    pending.append(this._teamCaption, this._message, this._list);
    const bodies: Record<TabName, HTMLElement> = {
      pending,
      history: this._history.node,
      kernels: this._kernels.node
    };
    const tablist = element('div', 'jp-QGuard-tabs');
    tablist.setAttribute('role', 'tablist');
    tablist.setAttribute('aria-label', 'Jobs and kernels');
    tablist.addEventListener('keydown', event => this._onTabKey(event));
    this.node.append(header, tablist);
    for (const { name, label } of TABS) {
      const tab = element('button', 'jp-QGuard-tab', label);
      tab.type = 'button';
      tab.id = `${PANEL_ID}-tab-${name}`;
      tab.dataset.tab = name;
      tab.setAttribute('role', 'tab');
      tab.addEventListener('click', () => this.select(name));
      const body = bodies[name];
      body.id = `${PANEL_ID}-${name}`;
      body.classList.add('jp-QGuard-tabBody');
      body.setAttribute('role', 'tabpanel');
      body.setAttribute('aria-labelledby', tab.id);
      tab.setAttribute('aria-controls', body.id);
      tablist.append(tab);
      this.node.append(body);
      this._tabs.set(name, { tab, body });
    }
    this.select('pending');

    this._events.jobChanged.connect(this._onJobChanged, this);
    this._events.stateChanged.connect(this._onConnection, this);
    this._onConnection(this._events, this._events.state);
    void this.refresh();
  }

  /** Shows one tab: Pending, History or Kernels. */
  select(name: TabName): void {
    this._selected = name;
    for (const [tabName, { tab, body }] of this._tabs) {
      const on = tabName === name;
      tab.setAttribute('aria-selected', String(on));
      // One tab stop for the whole tab list; the arrow keys move between tabs.
      tab.tabIndex = on ? 0 : -1;
      body.hidden = !on;
    }
    if (name === 'history') {
      this._history.show();
    }
    this._pollKernels();
  }

  /** A job newly waiting for approval, as the event stream announced it. */
  get requested(): ISignal<this, IJob> {
    return this._requested;
  }

  /** Pending jobs listed, newest first. */
  get jobs(): readonly IJob[] {
    return [...this._jobs.values()].filter(job => job.state === PENDING).sort(newestFirst);
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
      for (const [id, job] of [...this._jobs]) {
        if (job.state === PENDING && !fresh.has(id)) {
          // It stopped waiting while we were not told (the feed was down): say how it ended.
          void this._resync(id);
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
    window.clearInterval(this._kernelTimer);
    this._history.dispose();
    Signal.clearData(this);
    super.dispose();
  }

  protected override onAfterShow(): void {
    this._pollKernels();
  }

  protected override onAfterHide(): void {
    this._pollKernels();
  }

  /** The Kernels tab reads the kernels while it is on screen, and only then. */
  private _pollKernels(): void {
    const shown = this._selected === 'kernels' && this.isVisible;
    if (shown && !this._kernelTimer) {
      void this._kernels.refresh();
      this._kernelTimer = window.setInterval(() => void this._kernels.refresh(), KERNELS_EVERY_MS);
    } else if (!shown && this._kernelTimer) {
      window.clearInterval(this._kernelTimer);
      this._kernelTimer = 0;
    }
  }

  /** WAI-ARIA tabs: Left/Right move to the neighbouring tab, Home/End to the first/last. */
  private _onTabKey(event: KeyboardEvent): void {
    const names = TABS.map(t => t.name);
    const at = names.indexOf(this._selected);
    const next: Record<string, number> = {
      ArrowRight: (at + 1) % names.length,
      ArrowLeft: (at - 1 + names.length) % names.length,
      Home: 0,
      End: names.length - 1
    };
    const index = next[event.key];
    const name = index === undefined ? undefined : names[index];
    if (name === undefined) {
      return;
    }
    event.preventDefault();
    this.select(name);
    this._tabs.get(name)?.tab.focus();
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

  /**
   * A listed job that stops waiting without this panel acting on it (voided because a bound
   * file changed, expired, cancelled, decided by someone else) stays in the list, marked with
   * its new state and reason and without Approve, until it is dismissed: a request must not
   * vanish from under the person reading it.
   */
  private _apply(job: IJob): void {
    if (job.state === PENDING || (this._jobs.has(job.id) && !this._busy.has(job.id))) {
      this._upsert(job);
    } else {
      this._remove(job.id);
    }
  }

  /** Reads one job again and shows what became of it. */
  private async _resync(id: string): Promise<void> {
    try {
      this._apply(await this._client.job(id));
    } catch {
      this._remove(id); // Gone (404) or unreadable: the next refresh tells.
    }
    this._update();
  }

  private _upsert(job: IJob): void {
    const current = this._jobs.get(job.id);
    if (current && version(current) === version(job)) {
      return;
    }
    this._jobs.set(job.id, job);
    // The server runs in one mode for good: once a team job is seen, the queue is the team's.
    this._team ||= job.team === true;
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
      (
        neighbour?.querySelector<HTMLElement>('button:not(:disabled), a[href]') ??
        this._refreshButton
      ).focus();
    }
  }

  private _update(): void {
    const count = this.jobs.length;
    const shown = this._truncated && count >= this._limit ? `${count}+` : String(count);
    this._count.textContent = shown;
    this._count.setAttribute('aria-label', `${shown} waiting`);
    // Lumino renders the title's dataset as data-* attributes on the sidebar tab; the
    // stylesheet draws the badge from it.
    this.title.dataset = count > 0 ? { 'qguard-pending': shown } : {};
    const tab = this._tabs.get('pending')?.tab;
    if (tab) {
      tab.textContent = count > 0 ? `Pending (${shown})` : 'Pending';
    }

    this._teamCaption.hidden = !this._team;
    if (this._team) {
      this._list.setAttribute('aria-describedby', this._teamCaption.id);
    }

    if (this._loadError) {
      this._message.textContent = this._loadError;
      this._message.dataset.kind = 'error';
    } else if (this._jobs.size === 0) {
      this._message.textContent = this._team
        ? 'No job in the team queue is waiting for approval.'
        : 'No job is waiting for approval.';
      this._message.dataset.kind = 'empty';
    } else {
      this._message.textContent = '';
      delete this._message.dataset.kind;
    }
  }

  private _renderJob(job: IJob): HTMLLIElement {
    const id = short(job.id, 8);
    const ended = job.state !== PENDING;
    const item = element('li', 'jp-QGuard-job');
    item.setAttribute('role', 'listitem');
    item.dataset.jobId = job.id;
    item.dataset.state = job.state;
    item.classList.toggle('jp-mod-ended', ended);
    item.setAttribute(
      'aria-label',
      `Job ${id}: ${job.shots} shots on ${job.backend}${ended ? `, ${stateLabel(job.state)}` : ''}`
    );

    const top = element('div', 'jp-QGuard-jobTop');
    top.append(
      element('span', 'jp-QGuard-backend', job.backend),
      element('span', 'jp-QGuard-shots', `${job.shots.toLocaleString()} shots`),
      element('span', 'jp-QGuard-state', stateLabel(job.state))
    );

    const [fields, field] = fieldList();
    field('Job', code(id), job.id);
    field('Requested by', requesterLabel(job.requester));
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
    field('Asked', timeElement(job.created_at));

    const actions = element('div', 'jp-QGuard-actions');
    // Team mode: the job is decided on the team broker's page (this server answers 409), so a
    // waiting job links there, and an ended one has nothing to decide anywhere.
    const brokerUrl = job.approve_url;
    const decisions: HTMLButtonElement[] = [];
    if (brokerUrl) {
      if (!ended) {
        actions.append(approveLink(brokerUrl, job.id));
      }
    } else {
      const approve = button('Approve', `Approve job ${id}`, 'jp-QGuard-approve');
      approve.dataset.action = 'approve';
      approve.addEventListener('click', () => void this._approve(job));
      const deny = button('Deny', `Deny job ${id}`, 'jp-QGuard-deny');
      deny.dataset.action = 'deny';
      deny.addEventListener('click', () => void this._deny(job));
      decisions.push(approve, deny);
      actions.append(approve, deny);
    }

    const parts: HTMLElement[] = [top, fields];
    if (ended) {
      // No longer waiting: say why, and leave nothing to approve.
      const why = job.reason ? `: ${job.reason}` : '';
      const note = element(
        'p',
        'jp-QGuard-ended',
        `This request was ${stateLabel(job.state)}${why}`
      );
      note.setAttribute('role', 'alert');
      parts.push(note);
      for (const b of decisions) {
        b.disabled = true;
        b.title = `The job is ${stateLabel(job.state)}: there is nothing to decide`;
      }
      const dismiss = button('Dismiss', `Dismiss job ${id}`, 'jp-QGuard-dismiss');
      dismiss.dataset.action = 'dismiss';
      dismiss.addEventListener('click', () => {
        this._remove(job.id);
        this._update();
      });
      actions.append(dismiss);
    } else if (this._busy.has(job.id)) {
      setBusy(item, true);
    }
    if (!ended && !brokerUrl && job.mfa?.required) {
      // Before Approve is pressed: this approval will ask for a code, and why.
      const note = element(
        'p',
        'jp-QGuard-mfa',
        `Approving needs a code from your authenticator app: ${job.mfa.reasons.join('; ')}`
      );
      note.setAttribute('role', 'note');
      parts.push(note);
    }
    parts.push(reviewSection(job, this._client), actions);
    item.append(...parts);
    return item;
  }

  private async _approve(job: IJob): Promise<void> {
    await this._act(job, 'Approval failed', async () => {
      // The job says when a code is needed, and why: ask for it at once. Without that word
      // (an older server, or a reason that came up since), the server's 403 "mfa_required"
      // says so, with why in its message.
      let reasons = job.mfa?.required ? job.mfa.reasons : null;
      if (!reasons) {
        try {
          return await this._client.approve(job);
        } catch (err) {
          if (!(err instanceof QGuardError && err.mfaRequired)) {
            throw err;
          }
          reasons = [err.message];
        }
      }
      const otp = await askForCode(job, reasons);
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
    let stale = false;
    try {
      const updated = await request();
      if (updated) {
        this._apply(updated);
        this._update();
      }
    } catch (err) {
      // A 409 means the job moved on without us (voided, expired, decided elsewhere): after
      // the message, the job is read again and shown as it now is.
      stale = true;
      await showErrorMessage(failure, messageOf(err));
    } finally {
      this._busy.delete(job.id);
      this._setItemBusy(job.id, false);
    }
    if (stale) {
      await this._resync(job.id);
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
  private readonly _teamCaption: HTMLParagraphElement;
  private readonly _jobs = new Map<string, IJob>();
  private readonly _items = new Map<string, HTMLLIElement>();
  private readonly _busy = new Set<string>();
  private readonly _requested = new Signal<this, IJob>(this);
  private _limit: number;
  private _truncated = false;
  private _loadError = '';
  /** Team mode: a job the server listed said `team: true`. */
  private _team = false;
  private _generation = 0;
  /** Events seen while a refresh is in flight, re-applied over its snapshot. */
  private _replay: IJob[] | null = null;
  private _everOpened = false;
  private readonly _history: HistoryView;
  private readonly _kernels: KernelsView;
  private readonly _tabs = new Map<TabName, { tab: HTMLButtonElement; body: HTMLElement }>();
  private _selected: TabName = 'pending';
  private _kernelTimer = 0;
}

/**
 * Asks for the 6-digit code until one is given or the dialog is cancelled (null); why a code is
 * needed is said next to the field.
 */
async function askForCode(job: IJob, reasons: string[]): Promise<string | null> {
  const why = reasons.length ? ` Why: ${reasons.join('; ')}.` : '';
  let label =
    `Approving job ${short(job.id, 8)} needs a second factor.${why} ` +
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
    label = `The code is 6 digits.${why} Enter the one your authenticator app shows now.`;
  }
}

function setBusy(item: HTMLElement, busy: boolean): void {
  if (item.classList.contains('jp-mod-ended')) {
    return; // Its buttons stay as they are: Approve and Deny off, Dismiss on.
  }
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
