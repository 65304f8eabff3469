/**
 * Small DOM helpers shared by the panel's views. Text always goes in as textContent: job fields
 * come from agents, and nothing an agent wrote is ever parsed as HTML.
 */

export function element<K extends keyof HTMLElementTagNameMap>(
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

export function code(text: string): HTMLElement {
  return element('code', undefined, text);
}

export function button(label: string, ariaLabel: string, className: string): HTMLButtonElement {
  const b = element('button', `jp-QGuard-button ${className}`, label);
  b.type = 'button';
  b.setAttribute('aria-label', ariaLabel);
  return b;
}

/** A <dl class="jp-QGuard-fields"> and the function that adds a name and its value to it. */
export function fieldList(): [
  HTMLDListElement,
  (name: string, value: string | Node, title?: string) => void
] {
  const list = element('dl', 'jp-QGuard-fields');
  const add = (name: string, value: string | Node, title?: string): void => {
    const dd = element('dd');
    dd.append(value);
    if (title) {
      dd.title = title;
    }
    list.append(element('dt', undefined, name), dd);
  };
  return [list, add];
}

/** A <time> that shows the time alone for today (the sidebar is narrow), the date otherwise. */
export function timeElement(iso: string): HTMLTimeElement {
  const date = new Date(iso);
  const node = element('time', undefined, when(date));
  node.dateTime = iso;
  node.title = date.toLocaleString();
  return node;
}

function when(date: Date): string {
  if (date.toDateString() === new Date().toDateString()) {
    return date.toLocaleTimeString();
  }
  return date.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function short(value: string, length: number): string {
  return value.length > length ? value.slice(0, length) : value;
}

export function basename(path: string): string {
  return path.split('/').pop() || path;
}

/** "pending_approval" → "pending approval". */
export function stateLabel(state: string): string {
  return state.replace(/_/g, ' ');
}

/**
 * A link that opens in a new browser tab, without giving that page a handle on this one. Only
 * web addresses (http, https, or relative to this page) are linked, never `javascript:` and the
 * like: null otherwise.
 */
export function externalLink(
  label: string,
  ariaLabel: string,
  href: string,
  className: string
): HTMLAnchorElement | null {
  if (!isWebAddress(href)) {
    return null;
  }
  const a = element('a', className, label);
  a.setAttribute('href', href);
  a.target = '_blank';
  a.rel = 'noopener noreferrer';
  a.setAttribute('aria-label', ariaLabel);
  return a;
}

function isWebAddress(href: string): boolean {
  try {
    const url = new URL(href, document.baseURI);
    return url.protocol === 'http:' || url.protocol === 'https:';
  } catch {
    return false;
  }
}

/**
 * Team mode: where a job is approved or denied, the team broker's page, instead of the panel's
 * Approve and Deny. An address that is not a web page's is not linked, and the item says so.
 */
export function approveLink(approveUrl: string, jobId: string): HTMLElement {
  const id = short(jobId, 8);
  const link = externalLink(
    'Review on the team broker',
    `Review job ${id} on the team broker`,
    approveUrl,
    'jp-qguard-approve-link'
  );
  if (!link) {
    return element(
      'span',
      'jp-QGuard-approveLinkInvalid',
      'This job is decided on the team broker, but the server gave no valid link to it'
    );
  }
  link.title = 'Approve or deny it on the team broker’s page (opens a new tab)';
  link.dataset.action = 'broker';
  return link;
}
