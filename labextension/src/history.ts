/**
 * The panel's History: every job the broker has, newest first, filtered by state, backend and
 * requester, a page at a time. A job opened shows how it moved, who approved it and its result.
 * Changes arrive over the event stream, so a job's row follows it through its states.
 */

import {
  IJob,
  IJobDetail,
  IJobFilter,
  JobEvents,
  PENDING,
  QGuardClient,
  STATES,
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

const PAGE = 50;
/** Typing in a text filter reloads once the user pauses. */
const TYPING_MS = 400;

export class HistoryView {
  constructor(
    private readonly _client: QGuardClient,
    events: JobEvents
  ) {
    this.node = element('div', 'jp-QGuard-history');

    const form = element('form', 'jp-QGuard-filters');
    form.setAttribute('role', 'search');
    form.setAttribute('aria-label', 'Filter the job history');
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.reload();
    });
    this._state = element('select', 'jp-QGuard-filterState');
    this._state.append(new Option('Any state', ''));
    for (const state of STATES) {
      this._state.append(new Option(stateLabel(state), state));
    }
    this._state.addEventListener('change', () => void this.reload());
    this._backend = textFilter('Backend', 'e.g. fake_brisbane');
    this._user = textFilter('Requested by', 'user name');
    for (const input of [this._backend, this._user]) {
      input.addEventListener('input', () => {
        window.clearTimeout(this._typing);
        this._typing = window.setTimeout(() => void this.reload(), TYPING_MS);
      });
    }
    form.append(
      labelled('State', this._state),
      labelled('Backend', this._backend),
      labelled('Requested by', this._user)
    );

    this._message = element('p', 'jp-QGuard-message');
    this._message.setAttribute('role', 'status');
    this._list = element('ul', 'jp-QGuard-list jp-QGuard-historyList');
    this._list.setAttribute('aria-label', 'Job history');
    this._more = button('Show older jobs', 'Show older jobs', 'jp-QGuard-more');
    this._more.hidden = true;
    this._more.addEventListener('click', () => void this._load(true));

    this.node.append(form, this._message, this._list, this._more);
    events.jobChanged.connect(this._onJobChanged, this);
  }

  readonly node: HTMLDivElement;

  /** Reads the first page again with the current filters. */
  async reload(): Promise<void> {
    window.clearTimeout(this._typing);
    await this._load(false);
  }

  /** Loads the first page the first time the history is shown. */
  show(): void {
    if (!this._loaded) {
      void this.reload();
    }
  }

  dispose(): void {
    window.clearTimeout(this._typing);
  }

  private get _filter(): IJobFilter {
    const state = this._state.value;
    return {
      states: state ? [state] : [],
      backend: this._backend.value,
      user: this._user.value,
      limit: PAGE
    };
  }

  private async _load(older: boolean): Promise<void> {
    const generation = ++this._generation;
    const filter = this._filter;
    if (older) {
      filter.before = this._rows[this._rows.length - 1]?.created_at;
    }
    this._message.textContent = 'Loading…';
    delete this._message.dataset.kind;
    this._more.disabled = true;
    try {
      const jobs = await this._client.jobs(filter);
      if (generation !== this._generation) {
        return; // The filters changed meanwhile: a later load owns the list.
      }
      if (!older) {
        this._rows = [];
        this._items.clear();
        this._list.replaceChildren();
      }
      for (const job of jobs) {
        this._rows.push(job);
        const item = this._render(job);
        this._items.set(job.id, item);
        this._list.append(item);
      }
      this._loaded = true;
      this._more.hidden = jobs.length < PAGE;
      this._message.textContent = this._rows.length ? '' : 'No job matches these filters.';
    } catch (err) {
      if (generation === this._generation) {
        this._message.textContent = `The history could not be read: ${messageOf(err)}`;
        this._message.dataset.kind = 'error';
      }
    } finally {
      this._more.disabled = false;
    }
  }

  /** Is this job one the filters would list? */
  private _matches(job: IJob): boolean {
    const filter = this._filter;
    return (
      (!filter.states?.length || filter.states.includes(job.state)) &&
      (!filter.backend?.trim() || job.backend === filter.backend.trim()) &&
      (!filter.user?.trim() || job.requester.user === filter.user.trim())
    );
  }

  private _onJobChanged(_: JobEvents, job: IJob): void {
    if (!this._loaded) {
      return;
    }
    const old = this._items.get(job.id);
    const index = this._rows.findIndex(row => row.id === job.id);
    if (old) {
      if (!this._matches(job)) {
        // Left the filtered set (a state filter, say): drop it, as a reload would.
        old.remove();
        this._items.delete(job.id);
        this._rows.splice(index, 1);
      } else {
        this._rows[index] = job;
        this._updateRow(old, job);
      }
    } else if (this._matches(job)) {
      // A new job, or one that just entered the filtered set: newest first.
      const at = this._rows.findIndex(row => row.created_at < job.created_at);
      if (at < 0 && !this._more.hidden) {
        return; // Older than the page shown: "Show older jobs" reaches it.
      }
      const item = this._render(job);
      const next = at < 0 ? null : (this._items.get(this._rows[at]?.id ?? '') ?? null);
      this._list.insertBefore(item, next);
      this._items.set(job.id, item);
      this._rows.splice(at < 0 ? this._rows.length : at, 0, job);
    }
    this._message.textContent = this._rows.length ? '' : 'No job matches these filters.';
  }

  private _render(job: IJob): HTMLLIElement {
    const item = element('li', 'jp-QGuard-historyItem');
    item.dataset.jobId = job.id;
    const details = element('details');
    const summary = element('summary');
    details.append(summary);
    item.append(details);
    this._updateRow(item, job);
    details.addEventListener('toggle', () => {
      if (details.open) {
        void this._expand(details, job.id);
      }
    });
    return item;
  }

  /** The summary line: state, backend, shots, who and when. */
  private _updateRow(item: HTMLLIElement, job: IJob): void {
    item.dataset.state = job.state;
    const summary = item.querySelector('summary')!;
    const who = requesterLabel(job.requester);
    summary.replaceChildren(
      element('span', 'jp-QGuard-state', stateLabel(job.state)),
      element('span', 'jp-QGuard-backend', job.backend),
      element('span', 'jp-QGuard-shots', `${job.shots.toLocaleString()} shots`),
      element('span', 'jp-QGuard-who', who),
      timeElement(job.created_at)
    );
    summary.setAttribute(
      'aria-label',
      `Job ${short(job.id, 8)}, ${stateLabel(job.state)}: ${job.shots} shots on ` +
        `${job.backend}, asked by ${who}`
    );
    const details = item.querySelector('details')!;
    if (details.open) {
      void this._expand(details, job.id);
    }
  }

  /** The job's moves, approvals and result, read when the row is opened. */
  private async _expand(details: HTMLDetailsElement, id: string): Promise<void> {
    let body = details.querySelector<HTMLElement>('.jp-QGuard-historyBody');
    if (!body) {
      body = element('div', 'jp-QGuard-historyBody');
      details.append(body);
    }
    const status = element('p', 'jp-QGuard-reviewStatus', 'Loading…');
    status.setAttribute('role', 'status');
    body.replaceChildren(status);
    try {
      body.replaceChildren(...detailNodes(await this._client.job(id)));
    } catch (err) {
      status.textContent = `The job could not be read: ${messageOf(err)}`;
    }
  }

  private readonly _state: HTMLSelectElement;
  private readonly _backend: HTMLInputElement;
  private readonly _user: HTMLInputElement;
  private readonly _message: HTMLParagraphElement;
  private readonly _list: HTMLUListElement;
  private readonly _more: HTMLButtonElement;
  private readonly _items = new Map<string, HTMLLIElement>();
  private _rows: IJob[] = [];
  private _loaded = false;
  private _generation = 0;
  private _typing = 0;
}

function detailNodes(job: IJobDetail): Node[] {
  const [fields, field] = fieldList();
  field('Job', code(job.id));
  const notebook = job.requester.notebook;
  field('Notebook', notebook ? basename(notebook) : '—');
  if (job.reason) {
    field('Reason', job.reason);
  }
  if (typeof job.cost === 'number') {
    field('Cost', job.cost.toLocaleString());
  }
  if (job.approvals.length) {
    field('Approved by', job.approvals.map(a => a.approver).join(', '));
  }
  if (job.provider_job_id) {
    field('Provider job', code(job.provider_job_id));
  }
  const counts = job.result?.counts;
  if (counts && Object.keys(counts).length) {
    const top = Object.entries(counts)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4)
      .map(([outcome, n]) => `${outcome}: ${n}`)
      .join(', ');
    field('Result', top);
  }

  const moves = element('ol', 'jp-QGuard-moves');
  moves.setAttribute('aria-label', 'How the job moved');
  for (const event of job.events) {
    const li = element('li');
    li.append(
      timeElement(event.at),
      ` ${event.from ? `${stateLabel(event.from)} → ` : ''}${stateLabel(event.to)} `,
      element('span', 'jp-QGuard-who', `by ${event.actor}`)
    );
    moves.append(li);
  }
  const nodes: Node[] = [fields];
  if (job.approve_url && job.state === PENDING) {
    // Team mode: still waiting, and decided on the team broker's page.
    const actions = element('div', 'jp-QGuard-actions');
    actions.append(approveLink(job.approve_url, job.id));
    nodes.push(actions);
  }
  nodes.push(moves);
  return nodes;
}

function textFilter(name: string, placeholder: string): HTMLInputElement {
  const input = element('input');
  input.type = 'search';
  input.placeholder = placeholder;
  input.autocomplete = 'off';
  input.spellcheck = false;
  input.dataset.filter = name;
  return input;
}

function labelled(text: string, control: HTMLElement): HTMLLabelElement {
  const label = element('label', 'jp-QGuard-filter');
  label.append(element('span', undefined, text), control);
  return label;
}
